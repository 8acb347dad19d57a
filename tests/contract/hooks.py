"""schemathesis hooks for tests/it/contract.rs: tus bodies (application/offset+octet-stream,
/v1/uploads) are raw bytes, sent as schemathesis sends application/octet-stream."""
import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
