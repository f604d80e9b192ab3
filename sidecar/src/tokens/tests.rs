use super::*;

const SSE: HeaderValue = HeaderValue::from_static("text/event-stream; charset=utf-8");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn token(text: &str) -> String {
    format!(
        "data: {{\"model\":\"smollm2\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

#[test]
fn a_stream_is_timed_from_its_first_token_not_its_head() {
    let t0 = Instant::now();
    let mut m = TokenMeter::for_response(Some(&SSE), t0).unwrap();
    // The head and a role-only chunk at once; tokens from 300 ms, every 20 ms.
    m.chunk(
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        t0 + ms(1),
    );
    for i in 0..5 {
        m.chunk(token(&format!("t{i}")).as_bytes(), t0 + ms(300 + 20 * i));
    }
    m.chunk(
        b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        t0 + ms(390),
    );
    let t = m.tally(Ending::Complete, t0 + ms(400));
    assert_eq!(t.ttft, Some(ms(300)));
    assert_eq!(t.tpot, Some(ms(20)), "80 ms over 4 tokens after the first");
    assert_eq!(t.output, Some((5, Counted::Events)));
    assert_eq!((t.input, t.cached), (None, None));
    assert_eq!((t.model.as_deref(), t.outcome), (Some("smollm2"), "stop"));
    assert_eq!(t.duration, ms(400));
}

#[test]
fn usage_counts_are_taken_as_they_are_and_split_events_are_read() {
    let t0 = Instant::now();
    let mut m = TokenMeter::for_response(Some(&SSE), t0).unwrap();
    // Two events carrying ten tokens, cut anywhere across chunks; then the usage chunk.
    let stream = format!(
        "{}{}data: {{\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"length\"}}]}}\n\n\
         data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1200,\"completion_tokens\":10,\
         \"prompt_tokens_details\":{{\"cached_tokens\":1024}}}}}}\n\ndata: [DONE]\n\n",
        token("five words at a time"),
        token("and five more words"),
    );
    // The first event whole and the second's start, then the rest.
    let (a, b) = stream
        .as_bytes()
        .split_at(token("five words at a time").len() + 20);
    m.chunk(a, t0 + ms(50));
    m.chunk(b, t0 + ms(140));
    let t = m.tally(Ending::Complete, t0 + ms(150));
    assert_eq!(t.output, Some((10, Counted::Usage)));
    assert_eq!((t.input, t.cached), (Some(1200), Some(1024)));
    assert_eq!(t.ttft, Some(ms(50)));
    assert_eq!(t.tpot, Some(ms(90) / 9));
    assert_eq!(t.outcome, "length");
}

#[test]
fn a_whole_json_completion_gives_its_usage_and_no_token_timing() {
    let t0 = Instant::now();
    let mut m = TokenMeter::for_response(Some(&JSON), t0).unwrap();
    let body = br#"{"model":"m","choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":7}}"#;
    let (a, b) = body.split_at(20);
    m.chunk(a, t0 + ms(5));
    m.chunk(b, t0 + ms(6));
    let t = m.tally(Ending::Complete, t0 + ms(6));
    assert_eq!((t.ttft, t.tpot), (None, None));
    assert_eq!(
        (t.input, t.output, t.outcome),
        (Some(3), Some((7, Counted::Usage)), "stop")
    );
    // Not read when cut, nor past its bound.
    let mut m = TokenMeter::for_response(Some(&JSON), t0).unwrap();
    m.chunk(body, t0);
    assert_eq!(m.tally(Ending::Cut, t0).output, None);
    let mut m = TokenMeter::for_response(Some(&JSON), t0).unwrap();
    m.chunk(&vec![b' '; MAX_JSON], t0);
    m.chunk(body, t0);
    assert_eq!(m.tally(Ending::Complete, t0).outcome, "unfinished");
}

#[test]
fn cut_abandoned_and_unreadable_streams_say_so() {
    let t0 = Instant::now();
    let partial = |ending| {
        let mut m = TokenMeter::for_response(Some(&SSE), t0).unwrap();
        m.chunk(token("a").as_bytes(), t0 + ms(10));
        m.tally(ending, t0 + ms(20))
    };
    assert_eq!(partial(Ending::Cut).outcome, "cut");
    let t = partial(Ending::Aborted);
    assert_eq!(
        (t.outcome, t.output),
        ("aborted", Some((1, Counted::Events)))
    );
    assert_eq!(partial(Ending::Complete).outcome, "unfinished");
    // Events that are not JSON objects: relayed, no tokens.
    let mut m = TokenMeter::for_response(Some(&SSE), t0).unwrap();
    m.chunk(b"data: hello\n\ndata: {\"choices\":7}\n\n", t0);
    let t = m.tally(Ending::Complete, t0);
    assert_eq!((t.ttft, t.output), (None, Some((0, Counted::Events))));
}

#[test]
fn only_event_streams_and_json_are_metered() {
    let t0 = Instant::now();
    for ct in [
        "text/plain",
        "application/octet-stream",
        "application/jsonl",
    ] {
        assert!(TokenMeter::for_response(Some(&HeaderValue::from_static(ct)), t0).is_none());
    }
    assert!(TokenMeter::for_response(None, t0).is_none());
    assert!(
        TokenMeter::for_response(Some(&HeaderValue::from_static("Application/JSON; x=1")), t0)
            .is_some()
    );
    assert!(is_generation("/v1/chat/completions") && is_generation("/v1/completions"));
    assert!(!is_generation("/v1/embeddings") && !is_generation("/v2/models/m/infer"));
}

#[test]
fn every_outcome_a_tally_can_carry_is_listed() {
    use super::event::Finish;
    let finishes = [
        Finish::Stop,
        Finish::Length,
        Finish::ToolCalls,
        Finish::ContentFilter,
        Finish::Other,
    ];
    for label in finishes
        .map(Finish::label)
        .into_iter()
        .chain(["aborted", "cut", "unfinished"])
    {
        assert!(super::OUTCOMES.contains(&label), "{label}");
    }
    assert_eq!(super::OUTCOMES.len(), finishes.len() + 3);
}
