//! The conversion engine's tests, one binary that builds without the service: end to end
//! on real files (`convert`), hostile and mutated input (`hostile`), damaged files the
//! forgiving reader recovers (`recovery`), segments on several cores against one piece
//! (`nway`). `media` makes the fixtures (ffmpeg as oracle).

mod convert;
mod hostile;
mod media;
mod nway;
mod recovery;
