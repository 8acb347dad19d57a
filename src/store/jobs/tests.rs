use super::*;

fn new_job(key: Option<&str>) -> NewJob {
    NewJob {
        id: JobId::new("node-0"),
        owner_email: "a@example.com".into(),
        source: Source::Upload,
        file_name: "song.mp4".into(),
        bitrate_kbps: None,
        vbr_quality: None,
        idempotency_key: key.map(str::to_string),
        webhook_url: None,
    }
}

#[test]
fn ids_name_their_owner_and_parse_strictly() {
    let id = JobId::new("mp4tomp3-2");
    assert_eq!(id.owner(), "mp4tomp3-2");
    assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
    assert_ne!(JobId::new("n"), JobId::new("n"));
    for bad in [
        "",
        "~",
        "node~xyz",
        "node",
        "../x~0123456789abcdef01234567",
        "a/b~0123456789abcdef01234567",
    ] {
        assert_eq!(JobId::parse(bad), None, "{bad}");
    }
}

#[test]
fn idempotency_key_returns_the_same_job() {
    let mut store = Store::open_in_memory().unwrap();
    let (first, new) = store.insert_job(&new_job(Some("k1"))).unwrap();
    assert!(new);
    assert_eq!(first.state, JobState::Queued);
    let (again, new) = store.insert_job(&new_job(Some("k1"))).unwrap();
    assert!(!new);
    assert_eq!(again.id, first.id);
    let (other, new) = store.insert_job(&new_job(Some("k2"))).unwrap();
    assert!(new);
    assert_ne!(other.id, first.id);
    assert_eq!(store.list_jobs(Some("a@example.com"), 10, 0).unwrap().len(), 2);
    assert_eq!(store.list_jobs(Some("b@example.com"), 10, 0).unwrap().len(), 0);
    assert_eq!(store.job(&first.id).unwrap().map(|j| j.id), Some(first.id.clone()));
    assert_eq!(store.job(&JobId::new("node-0")).unwrap(), None);
    // Other nodes ask by key: the submitter's own key only.
    let keyed = store.keyed_job("a@example.com", "k1").unwrap().map(|j| j.id);
    assert_eq!(keyed, Some(first.id.clone()));
    assert_eq!(store.keyed_job("b@example.com", "k1").unwrap(), None);
    assert_eq!(store.keyed_job("a@example.com", "k3").unwrap(), None);
}

#[test]
fn finishing_writes_the_outbox_row_and_fences_stale_attempts() {
    let mut store = Store::open_in_memory().unwrap();
    let (job, _) = store.insert_job(&new_job(None)).unwrap();
    let first = store.start(&job.id, JobState::Converting).unwrap();
    let second = store.start(&job.id, JobState::Converting).unwrap();
    assert_eq!(second, first + 1, "re-placing bumps the fencing token");
    assert!(
        !store.set_progress(&job.id, first, 0.5).unwrap(),
        "stale progress is ignored"
    );
    assert!(store.set_progress(&job.id, second, 0.5).unwrap());
    assert!(matches!(
        store.finish(&job.id, first, Ok(&Produced::default())),
        Err(StoreError::Conflict { .. })
    ));
    assert!(store.due_mail(10).unwrap().is_empty(), "no mail for a refused result");
    let produced = Produced {
        mp3_bytes: 160_044,
        duration_ms: 10_005,
        warnings: Some("recovered 10.0 s of 20.0 s".into()),
    };
    let done = store.finish(&job.id, second, Ok(&produced)).unwrap();
    assert_eq!(done.state, JobState::Done);
    assert_eq!(done.produced.as_ref(), Some(&produced), "what it produced is stored");
    assert_eq!(store.job(&job.id).unwrap().unwrap().produced, Some(produced));
    let mail = store.due_mail(10).unwrap();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].job_id, job.id);
    assert!(
        matches!(
            store.finish(&job.id, second, Ok(&Produced::default())),
            Err(StoreError::Conflict { .. })
        ),
        "only once"
    );
    store.mail_sent(mail[0].id).unwrap();
    assert!(store.due_mail(10).unwrap().is_empty());
}

#[test]
fn handovers_carry_state_key_mail_and_webhooks_and_adopt_once() {
    let mut from = Store::open_in_memory().unwrap();
    let (queued, _) = from.insert_job(&new_job(Some("k1"))).unwrap();
    let hooked = NewJob {
        webhook_url: Some("https://hooks.example.org/x".into()),
        ..new_job(None)
    };
    let (done, _) = from.insert_job(&hooked).unwrap();
    let (mailed, _) = from.insert_job(&new_job(None)).unwrap();
    let produced = Produced {
        mp3_bytes: 4_096,
        duration_ms: 1_500,
        warnings: None,
    };
    for id in [&done.id, &mailed.id] {
        let attempt = from.start(id, JobState::Converting).unwrap();
        from.finish(id, attempt, Ok(&produced)).unwrap();
    }
    let sent = from
        .due_mail(10)
        .unwrap()
        .into_iter()
        .find(|m| m.job_id == mailed.id)
        .unwrap();
    from.mail_sent(sent.id).unwrap();
    from.start(&queued.id, JobState::Converting).unwrap();
    let all = from.handovers().unwrap();
    let order: Vec<_> = all.iter().map(|h| (&h.job.id, h.mail)).collect();
    assert_eq!(
        order,
        vec![
            (&queued.id, MailState::None),
            (&done.id, MailState::Pending),
            (&mailed.id, MailState::Sent)
        ],
        "unfinished first, then pending mail"
    );
    assert_eq!(all[0].idempotency_key.as_deref(), Some("k1"));
    assert_eq!(
        all[1].webhooks.len(),
        1,
        "the done job's pending webhook call goes with it"
    );

    let mut to = Store::open_in_memory().unwrap();
    let (clash, _) = to.insert_job(&new_job(Some("k1"))).unwrap();
    for h in &all {
        assert_eq!(to.adopt(h).unwrap().map(|j| j.id), Some(h.job.id.clone()));
        assert_eq!(to.adopt(h).unwrap(), None, "a retried handover changes nothing");
    }
    let taken = to.job(&queued.id).unwrap().unwrap();
    assert_eq!(taken.state, JobState::Queued, "an interrupted conversion starts again");
    assert_eq!(taken.attempt, all[0].job.attempt, "the fencing token carries on");
    let adopted = to.job(&done.id).unwrap().unwrap();
    assert_eq!(adopted.state, JobState::Done);
    assert_eq!(adopted.produced, Some(produced), "size and duration go with it");
    let due = to.due_mail(10).unwrap();
    assert_eq!(
        due.iter().map(|m| &m.job_id).collect::<Vec<_>>(),
        vec![&done.id],
        "only the unsent mail"
    );
    let calls = to.due_webhooks(10).unwrap();
    assert_eq!(
        calls.iter().map(|d| d.delivery.event_id.as_str()).collect::<Vec<_>>(),
        vec![format!("{}.job.finished", done.id).as_str()],
        "the webhook call, under the same event id"
    );
    assert_eq!(
        to.job(&done.id).unwrap().unwrap().webhook_url.as_deref(),
        Some("https://hooks.example.org/x")
    );
    let (again, new) = to.insert_job(&new_job(Some("k1"))).unwrap();
    assert!(!new);
    assert_eq!(again.id, clash.id, "the key already used here keeps its job");
    assert!(from.forget_job(&queued.id).unwrap());
    assert_eq!(from.job(&queued.id).unwrap(), None);
}

#[test]
fn failures_keep_code_and_message_and_unfinished_jobs_are_found() {
    let mut store = Store::open_in_memory().unwrap();
    let (a, _) = store.insert_job(&new_job(None)).unwrap();
    let (b, _) = store.insert_job(&new_job(None)).unwrap();
    let attempt = store.start(&a.id, JobState::Converting).unwrap();
    let failed = store
        .finish(&a.id, attempt, Err(("not_mp4", "not an MP4 file")))
        .unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.error_code.as_deref(), Some("not_mp4"));
    let unfinished = store.unfinished_jobs().unwrap();
    assert_eq!(unfinished.iter().map(|j| &j.id).collect::<Vec<_>>(), vec![&b.id]);
    store.cancel(&b.id).unwrap();
    assert!(store.unfinished_jobs().unwrap().is_empty());
    assert!(matches!(store.cancel(&b.id), Err(StoreError::Conflict { .. })));
    store
        .mail_failed(store.due_mail(1).unwrap()[0].id, "smtp down", i64::MAX)
        .unwrap();
    assert!(store.due_mail(10).unwrap().is_empty(), "retry waits for its time");
}

/// The status read's cached statement is compiled once: reading other jobs (new bindings)
/// does not re-prepare it (it did on every call while plans could depend on bound values).
#[test]
fn the_status_read_is_not_prepared_again_for_each_job() {
    let mut store = Store::open_in_memory().unwrap();
    let ids: Vec<JobId> = (0..5).map(|_| store.insert_job(&new_job(None)).unwrap().0.id).collect();
    for id in ids.iter().chain(&ids) {
        assert!(store.job(id).unwrap().is_some());
    }
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs_view WHERE id = ?1");
    let reprepared = store
        .conn
        .prepare_cached(&sql)
        .unwrap()
        .get_status(rusqlite::StatementStatus::RePrepare);
    assert_eq!(reprepared, 0, "the cached status statement was compiled again");
}
