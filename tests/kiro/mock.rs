//! KiroMock itself: scripted tool calls, thinking, context usage and exception frames, the strict
//! request-body checks with Kiro's answers, and the recorded request bodies.
#![cfg(all(feature = "kiro", feature = "test-util"))]

use serde_json::{json, Value};
use tower_account_pool::kiro::eventstream::{decode_all, HeaderValue, Message};
use tower_account_pool::testing::{Event, KiroMock, Reply, Validation, KIRO_MODEL_IDS};

async fn mock() -> KiroMock {
    let mock = KiroMock::start().await;
    mock.accept_access_token("acct", "at-acct");
    mock
}

struct Answer {
    status: u16,
    rejection: Option<String>,
    error_type: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn frames(&self) -> Vec<Message> {
        decode_all(&self.body).expect("a well-formed event stream")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Kiro's answer to a refused body: the status, message, reason and the mock's detail.
    fn refused(&self) -> (u16, String, Value, String) {
        let body = self.json();
        assert_eq!(
            self.error_type.as_deref(),
            Some("ValidationException:http://internal.amazon.com/coral/com.amazon.kiro/")
        );
        (
            self.status,
            body["message"].as_str().unwrap_or_default().to_owned(),
            body["reason"].clone(),
            self.rejection.clone().unwrap_or_default(),
        )
    }
}

async fn send(mock: &KiroMock, body: impl Into<reqwest::Body>) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("{}/generateAssistantResponse", mock.url()))
        .bearer_auth("at-acct")
        .body(body)
        .send()
        .await
        .expect("a response");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Answer {
        status: response.status().as_u16(),
        rejection: header("x-kiro-mock-rejection"),
        error_type: header("x-amzn-errortype"),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

async fn chat(mock: &KiroMock, body: &Value) -> Answer {
    send(mock, body.to_string()).await
}

fn user(content: &str) -> Value {
    json!({"content": content, "modelId": "claude-sonnet-4.5", "origin": "AI_EDITOR"})
}

/// A valid body: `history` and the current user message.
fn body(history: Vec<Value>, current: Value) -> Value {
    let mut state = json!({
        "chatTriggerType": "MANUAL",
        "conversationId": "6f1c1f5e-2d1a-4c1b-9a55-6c1a4c1b9a55",
        "currentMessage": {"userInputMessage": current},
    });
    if !history.is_empty() {
        state["history"] = Value::Array(history);
    }
    json!({ "conversationState": state })
}

fn weather_tool() -> Value {
    json!({"toolSpecification": {
        "name": "get_weather",
        "description": "The weather in a city",
        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}}})
}

/// A tool round trip: the user asks, the assistant calls `get_weather`, the current message
/// carries the result.
fn round_trip() -> Value {
    let mut current = user("");
    current["userInputMessageContext"] = json!({
        "toolResults": [{"toolUseId": "tooluse_1", "status": "success",
                         "content": [{"text": "18°C, sunny"}]}],
        "tools": [weather_tool()],
    });
    body(
        vec![
            json!({"userInputMessage": user("Weather in Paris?")}),
            json!({"assistantResponseMessage": {"content": "Let me look.",
                "toolUses": [{"toolUseId": "tooluse_1", "name": "get_weather",
                              "input": {"city": "Paris"}}]}}),
        ],
        current,
    )
}

fn payload(frame: &Message) -> Value {
    serde_json::from_slice(&frame.payload).expect("a JSON payload")
}

fn texts(frames: &[Message]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.event_type() == Some("assistantResponseEvent"))
        .map(|f| payload(f)["content"].as_str().unwrap().to_owned())
        .collect()
}

// ===== replies =====

#[tokio::test]
async fn a_tool_call_arrives_as_start_fragments_and_stop() {
    let mock = mock().await;
    mock.script(
        "acct",
        [Reply::tool_use(
            "get_weather",
            "tooluse_1",
            [r#"{"ci"#, r#"ty": "Pa"#, r#"ris"}"#],
        )],
    );
    let answer = chat(&mock, &body(vec![], user("Weather?"))).await;
    assert_eq!(answer.status, 200);
    let frames = answer.frames();
    let kinds: Vec<_> = frames.iter().map(|f| f.event_type().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "toolUseEvent",
            "toolUseEvent",
            "toolUseEvent",
            "toolUseEvent",
            "toolUseEvent",
            "meteringEvent",
            "contextUsageEvent"
        ]
    );
    let tool: Vec<Value> = frames[..5].iter().map(payload).collect();
    assert_eq!(
        tool[0],
        json!({"name": "get_weather", "toolUseId": "tooluse_1", "input": ""})
    );
    let input: String = tool[1..4]
        .iter()
        .map(|p| {
            assert_eq!(p["name"], "get_weather");
            assert_eq!(p["toolUseId"], "tooluse_1");
            assert!(p.get("stop").is_none(), "{p}");
            p["input"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(
        tool[4],
        json!({"name": "get_weather", "toolUseId": "tooluse_1", "stop": true})
    );
    assert_eq!(payload(&frames[6]), json!({"contextUsagePercentage": 1.2}));
}

#[tokio::test]
async fn an_unfinished_tool_call_has_no_stop_frame() {
    let mock = mock().await;
    mock.script(
        "acct",
        [Reply::events([Event::unfinished_tool_use(
            "write_file",
            "tooluse_9",
            [r#"{"path": "a.txt", "con"#],
        )])],
    );
    let frames = chat(&mock, &body(vec![], user("Write it"))).await.frames();
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| payload(f).get("stop").is_none()));
    assert_eq!(payload(&frames[1])["input"], r#"{"path": "a.txt", "con"#);
}

#[tokio::test]
async fn thinking_is_text_with_tags_split_across_frames() {
    let mock = mock().await;
    mock.script(
        "acct",
        [Reply::thinking("Paris is in France.", "It is sunny.")],
    );
    let frames = chat(&mock, &body(vec![], user("Weather?"))).await.frames();
    let texts = texts(&frames);
    let thought = "<thinking>Paris is in France.</thinking>\n\n";
    let thought_frames = thought.chars().count().div_ceil(5);
    assert_eq!(texts.len(), thought_frames + 1);
    assert!(texts[..thought_frames]
        .iter()
        .all(|t| t.chars().count() <= 5));
    // The tags themselves are cut: no frame holds a whole tag.
    assert!(texts
        .iter()
        .all(|t| !t.contains("<thinking>") && !t.contains("</thinking>")));
    assert_eq!(texts[..thought_frames].concat(), thought);
    assert_eq!(texts[thought_frames], "It is sunny.");
    assert_eq!(
        frames.last().unwrap().event_type(),
        Some("contextUsageEvent")
    );
}

#[tokio::test]
async fn thinking_splits_on_characters_not_bytes() {
    let mock = mock().await;
    mock.script(
        "acct",
        [Reply::events([Event::thinking("日本語で考える", 1)])],
    );
    let texts = texts(&chat(&mock, &body(vec![], user("?"))).await.frames());
    let whole = "<thinking>日本語で考える</thinking>\n\n";
    assert_eq!(texts.len(), whole.chars().count());
    assert_eq!(texts.concat(), whole);
    // A frame size of 0 is taken as 1.
    mock.script("acct", [Reply::events([Event::thinking("ab", 0)])]);
    let texts = texts_of(&mock).await;
    assert_eq!(texts.len(), "<thinking>ab</thinking>\n\n".len());
}

async fn texts_of(mock: &KiroMock) -> Vec<String> {
    texts(&chat(mock, &body(vec![], user("?"))).await.frames())
}

#[tokio::test]
async fn one_reply_holds_thinking_text_two_tools_usage_and_an_exception() {
    let mock = mock().await;
    mock.script(
        "acct",
        [Reply::events([
            Event::thinking("Two cities.", 4),
            Event::text("Checking both."),
            Event::tool_use("get_weather", "tooluse_a", [r#"{"city":"#, r#""Paris"}"#]),
            Event::tool_use("get_weather", "tooluse_b", [r#"{"city":"Rome"}"#]),
            Event::metering(0.02),
            Event::context_usage(61.49),
            Event::exception("InternalServerException", "Something broke"),
        ])],
    );
    let frames = chat(&mock, &body(vec![], user("Paris and Rome?")))
        .await
        .frames();
    let ids: Vec<String> = frames
        .iter()
        .filter(|f| f.event_type() == Some("toolUseEvent"))
        .map(|f| payload(f)["toolUseId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        [
            "tooluse_a",
            "tooluse_a",
            "tooluse_a",
            "tooluse_a",
            "tooluse_b",
            "tooluse_b",
            "tooluse_b"
        ]
    );
    let texts = texts(&frames);
    assert_eq!(
        texts.concat(),
        "<thinking>Two cities.</thinking>\n\nChecking both."
    );
    let metering = frames
        .iter()
        .find(|f| f.event_type() == Some("meteringEvent"))
        .unwrap();
    assert_eq!(payload(metering), json!({"unit": "credit", "usage": 0.02}));
    let usage = &frames[frames.len() - 2];
    assert_eq!(payload(usage), json!({"contextUsagePercentage": 61.49}));
    let last = frames.last().unwrap();
    assert_eq!(last.message_type(), Some("exception"));
    assert_eq!(last.exception_type(), Some("InternalServerException"));
    assert_eq!(payload(last), json!({"message": "Something broke"}));
    // The text comes before the tools, in script order.
    let first_tool = frames
        .iter()
        .position(|f| f.event_type() == Some("toolUseEvent"))
        .unwrap();
    let last_text = frames
        .iter()
        .rposition(|f| f.event_type() == Some("assistantResponseEvent"))
        .unwrap();
    assert!(last_text < first_tool);
}

#[tokio::test]
async fn then_appends_to_a_success_before_its_closing_events() {
    let reply = Reply::success(&["Let me ", "look."]).then(Event::tool_use(
        "get_weather",
        "tooluse_1",
        ["{}"],
    ));
    assert_eq!(
        reply,
        Reply::events([
            Event::text("Let me "),
            Event::text("look."),
            Event::tool_use("get_weather", "tooluse_1", ["{}"]),
            Event::metering(0.01),
            Event::context_usage(1.2),
        ])
    );
    let more = reply.then(Event::text("Done."));
    let Reply::Events { events } = &more else {
        panic!("still events: {more:?}");
    };
    assert_eq!(events.last(), Some(&Event::text("Done.")));
    assert_eq!(Reply::Suspended.then(Event::text("x")), Reply::Suspended);

    let mock = mock().await;
    mock.script("acct", [more]);
    let frames = chat(&mock, &body(vec![], user("?"))).await.frames();
    assert_eq!(frames.len(), 2 + 3 + 2 + 1);
    assert_eq!(texts(&frames), ["Let me ", "look.", "Done."]);
}

#[tokio::test]
async fn any_frame_can_be_scripted() {
    let mock = mock().await;
    let followup = Message::event(
        "followupPromptEvent",
        br#"{"followupPrompt":{"content":"More?"}}"#.to_vec(),
    )
    .with_header(":extra", HeaderValue::Int32(7));
    mock.script(
        "acct",
        [Reply::events([
            Event::text("Hi"),
            Event::Frame(followup.clone()),
        ])],
    );
    let frames = chat(&mock, &body(vec![], user("?"))).await.frames();
    assert_eq!(frames[1], followup);

    // A frame that cannot be encoded drops the connection.
    let oversized =
        Message::new(Vec::new()).with_header(":big", HeaderValue::String("x".repeat(70_000)));
    mock.script("acct", [Reply::events([Event::Frame(oversized)])]);
    let failed = reqwest::Client::new()
        .post(format!("{}/generateAssistantResponse", mock.url()))
        .bearer_auth("at-acct")
        .body(body(vec![], user("?")).to_string())
        .send()
        .await;
    assert!(failed.is_err(), "{failed:?}");
}

// ===== recorded bodies =====

#[tokio::test]
async fn the_parsed_body_is_recorded_with_its_tool_results() {
    let mock = mock().await;
    let sent = round_trip();
    assert_eq!(chat(&mock, &sent).await.status, 200);
    let recorded = &mock.requests_to("/generateAssistantResponse")[0];
    assert_eq!(recorded.json.as_ref(), Some(&sent));
    assert_eq!(recorded.rejection, None);
    assert_eq!(recorded.tool_result_ids(), ["tooluse_1"]);
    assert_eq!(
        recorded.current_message().unwrap()["userInputMessageContext"]["toolResults"][0]["content"]
            [0]["text"],
        "18°C, sunny"
    );
}

#[tokio::test]
async fn a_refused_body_is_recorded_and_leaves_the_script_alone() {
    let mock = mock().await;
    mock.script("acct", [Reply::success(&["scripted"])]);
    let answer = send(&mock, "not json").await;
    let (status, message, reason, detail) = answer.refused();
    assert_eq!(
        (status, message.as_str()),
        (400, "Improperly formed request.")
    );
    assert_eq!(reason, Value::Null);
    assert!(
        detail.starts_with("the body is not JSON: expected ident"),
        "{detail}"
    );
    let recorded = mock.requests();
    assert_eq!(recorded[0].json, None);
    assert_eq!(recorded[0].rejection.as_deref(), Some(detail.as_str()));
    // The scripted reply is still there for the next valid request.
    let frames = chat(&mock, &body(vec![], user("?"))).await.frames();
    assert_eq!(texts(&frames), ["scripted"]);
}

#[tokio::test]
async fn the_token_is_checked_before_the_body() {
    let mock = mock().await;
    let response = reqwest::Client::new()
        .post(format!("{}/generateAssistantResponse", mock.url()))
        .bearer_auth("at-unknown")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("x-kiro-mock-rejection").is_none());
    assert_eq!(mock.requests()[0].rejection, None);
}

// ===== validation =====

/// Sends `body` and returns what the mock answered: status, message, reason, detail.
async fn refuse(mock: &KiroMock, body: &Value) -> (u16, String, Value, String) {
    chat(mock, body).await.refused()
}

async fn improper(mock: &KiroMock, body: &Value) -> String {
    let (status, message, reason, detail) = refuse(mock, body).await;
    assert_eq!(status, 400, "{detail}");
    assert_eq!(message, "Improperly formed request.", "{detail}");
    assert_eq!(reason, Value::Null, "{detail}");
    detail
}

#[tokio::test]
async fn valid_bodies_pass() {
    let mock = mock().await;
    for valid in [
        body(vec![], user("Hi")),
        body(vec![], user("")),
        round_trip(),
        // Unknown fields are accepted (the gateway example adds a top-level `model`).
        json!({"model": "claude-sonnet-4-5", "profileArn": "arn:aws:codewhisperer:us-east-1:1:profile/P",
               "conversationState": {"currentMessage": {"userInputMessage": {"content": "Hi"}}}}),
        // Images, and a system prompt as its own history pair.
        body(
            vec![
                json!({"userInputMessage": user("You are terse.")}),
                json!({"assistantResponseMessage": {"content": "I will follow these instructions."}}),
            ],
            json!({"content": "What is this?", "modelId": "claude-opus-4.5", "origin": "AI_EDITOR",
                   "images": [{"format": "png", "source": {"bytes": "iVBORw0KGgo="}}]}),
        ),
    ] {
        let answer = chat(&mock, &valid).await;
        assert_eq!(answer.status, 200, "{valid}: {:?}", answer.rejection);
    }
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_refused() {
    let mock = mock().await;
    assert_eq!(
        improper(&mock, &json!([1, 2])).await,
        "the body must be a JSON object"
    );
}

#[tokio::test]
async fn null_fields_are_refused_wherever_they_are() {
    let mock = mock().await;
    let mut b = body(vec![], user("Hi"));
    b["profileArn"] = Value::Null;
    assert_eq!(improper(&mock, &b).await, "profileArn is null");

    let mut b = round_trip();
    b["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]
        ["tools"][0]["toolSpecification"]["inputSchema"]["json"]["required"] = Value::Null;
    assert_eq!(
        improper(&mock, &b).await,
        "conversationState.currentMessage.userInputMessage.userInputMessageContext.tools[0].toolSpecification.inputSchema.json.required is null"
    );

    let mut b = round_trip();
    b["conversationState"]["history"][1]["assistantResponseMessage"]["toolUses"][0]["input"]
        ["city"] = Value::Null;
    assert_eq!(
        improper(&mock, &b).await,
        "conversationState.history[1].assistantResponseMessage.toolUses[0].input.city is null"
    );
}

#[tokio::test]
async fn a_missing_current_message_is_refused() {
    let mock = mock().await;
    assert_eq!(
        improper(&mock, &json!({})).await,
        "body.conversationState is missing"
    );
    assert_eq!(
        improper(&mock, &json!({"conversationState": {}})).await,
        "conversationState.currentMessage is missing"
    );
    assert_eq!(
        improper(&mock, &json!({"conversationState": {"currentMessage": {}}})).await,
        "conversationState.currentMessage.userInputMessage is missing"
    );
    let assistant_as_current = json!({"conversationState": {"currentMessage": {
        "assistantResponseMessage": {"content": "Hi"}}}});
    assert_eq!(
        improper(&mock, &assistant_as_current).await,
        "conversationState.currentMessage.userInputMessage is missing"
    );
    assert_eq!(
        improper(
            &mock,
            &body(vec![], json!({"modelId": "claude-sonnet-4.5"}))
        )
        .await,
        "conversationState.currentMessage.userInputMessage.content is missing"
    );
}

#[tokio::test]
async fn wrong_types_are_refused() {
    let mock = mock().await;
    let cases = [
        (json!({"conversationState": []}), "conversationState must be an object"),
        (
            json!({"conversationState": {"chatTriggerType": 1, "currentMessage": {"userInputMessage": user("Hi")}}}),
            "conversationState.chatTriggerType must be a string",
        ),
        (
            json!({"profileArn": 7, "conversationState": {"currentMessage": {"userInputMessage": user("Hi")}}}),
            "body.profileArn must be a string",
        ),
        (
            body(vec![], json!({"content": ["Hi"]})),
            "conversationState.currentMessage.userInputMessage.content must be a string",
        ),
        (
            body(vec![], json!({"content": "Hi", "modelId": 4})),
            "conversationState.currentMessage.userInputMessage.modelId must be a string",
        ),
        (
            json!({"conversationState": {"history": {}, "currentMessage": {"userInputMessage": user("Hi")}}}),
            "conversationState.history must be an array",
        ),
        (
            body(vec![], json!({"content": "Hi", "images": [{"format": "png", "source": {}}]})),
            "conversationState.currentMessage.userInputMessage.images[0].source.bytes is missing",
        ),
        (
            body(vec![], json!({"content": "Hi", "userInputMessageContext": {"toolResults": [
                {"toolUseId": "t", "content": "text"}]}})),
            "conversationState.currentMessage.userInputMessage.userInputMessageContext.toolResults[0].content must be an array",
        ),
        (
            body(vec![], json!({"content": "Hi", "userInputMessageContext": {"toolResults": [
                {"toolUseId": "t", "content": [{"image": "x"}]}]}})),
            "conversationState.currentMessage.userInputMessage.userInputMessageContext.toolResults[0].content[0] must hold `text` or `json`",
        ),
        (
            body(vec![], json!({"content": "Hi", "userInputMessageContext": {"toolResults": [
                {"toolUseId": "t", "status": "ok", "content": [{"text": "x"}]}]}})),
            "conversationState.currentMessage.userInputMessage.userInputMessageContext.toolResults[0].status must be `success` or `error`, not `ok`",
        ),
    ];
    for (b, expected) in cases {
        assert_eq!(improper(&mock, &b).await, expected, "{b}");
    }
}

#[tokio::test]
async fn every_shape_rule_names_its_field() {
    let mock = mock().await;
    let cur = "conversationState.currentMessage.userInputMessage";
    let ctx = format!("{cur}.userInputMessageContext");
    let with_context = |context: Value| {
        body(
            vec![],
            json!({"content": "Hi", "userInputMessageContext": context}),
        )
    };
    let pair = |assistant: Value| {
        body(
            vec![json!({"userInputMessage": user("Hi")}), assistant],
            user("Next"),
        )
    };
    let cases = [
        (
            json!({"conversationState": {"currentMessage": []}}),
            "conversationState.currentMessage must be an object".to_owned(),
        ),
        (
            json!({"conversationState": {"currentMessage": {"userInputMessage": "Hi"}}}),
            format!("{cur} must be an object"),
        ),
        (
            json!({"conversationState": {"history": ["Hi"], "currentMessage": {"userInputMessage": user("Hi")}}}),
            "conversationState.history[0] must be an object".to_owned(),
        ),
        (
            json!({"conversationState": {"conversationId": 1, "currentMessage": {"userInputMessage": user("Hi")}}}),
            "conversationState.conversationId must be a string".to_owned(),
        ),
        (
            body(vec![], json!({"content": "Hi", "origin": false})),
            format!("{cur}.origin must be a string"),
        ),
        (
            body(vec![], json!({"content": "Hi", "images": {}})),
            format!("{cur}.images must be an array"),
        ),
        (
            body(vec![], json!({"content": "Hi", "images": ["png"]})),
            format!("{cur}.images[0] must be an object"),
        ),
        (
            body(
                vec![],
                json!({"content": "Hi", "images": [{"source": {"bytes": "AA=="}}]}),
            ),
            format!("{cur}.images[0].format is missing"),
        ),
        (
            body(
                vec![],
                json!({"content": "Hi", "images": [{"format": "png", "source": "AA=="}]}),
            ),
            format!("{cur}.images[0].source must be an object"),
        ),
        (
            body(
                vec![],
                json!({"content": "Hi", "userInputMessageContext": []}),
            ),
            format!("{ctx} must be an object"),
        ),
        (
            with_context(json!({"toolResults": {}})),
            format!("{ctx}.toolResults must be an array"),
        ),
        (
            with_context(json!({"toolResults": [1]})),
            format!("{ctx}.toolResults[0] must be an object"),
        ),
        (
            with_context(json!({"toolResults": [{"content": []}]})),
            format!("{ctx}.toolResults[0].toolUseId is missing"),
        ),
        (
            with_context(json!({"toolResults": [{"toolUseId": "", "content": []}]})),
            format!("{ctx}.toolResults[0].toolUseId is empty"),
        ),
        (
            with_context(json!({"toolResults": [{"toolUseId": "t"}]})),
            format!("{ctx}.toolResults[0].content is missing"),
        ),
        (
            with_context(json!({"toolResults": [{"toolUseId": "t", "content": ["x"]}]})),
            format!("{ctx}.toolResults[0].content[0] must be an object"),
        ),
        (
            with_context(json!({"toolResults": [{"toolUseId": "t", "content": [{"text": 5}]}]})),
            format!("{ctx}.toolResults[0].content[0].text must be a string"),
        ),
        (
            with_context(json!({"tools": {}})),
            format!("{ctx}.tools must be an array"),
        ),
        (
            with_context(json!({"tools": ["get_weather"]})),
            format!("{ctx}.tools[0] must be an object"),
        ),
        (
            pair(json!({"assistantResponseMessage": "Hello"})),
            "conversationState.history[1].assistantResponseMessage must be an object".to_owned(),
        ),
        (
            pair(json!({"assistantResponseMessage": {}})),
            "conversationState.history[1].assistantResponseMessage.content is missing".to_owned(),
        ),
        (
            pair(json!({"assistantResponseMessage": {"content": "Hello", "toolUses": {}}})),
            "conversationState.history[1].assistantResponseMessage.toolUses must be an array"
                .to_owned(),
        ),
        (
            body(
                vec![
                    json!({"userInputMessage": {"modelId": "claude-sonnet-4.5"}}),
                    json!({"assistantResponseMessage": {"content": "Hello"}}),
                ],
                user("Next"),
            ),
            "conversationState.history[0].userInputMessage.content is missing".to_owned(),
        ),
    ];
    for (b, expected) in cases {
        assert_eq!(improper(&mock, &b).await, expected, "{b}");
    }
    // A tool result may carry JSON instead of text.
    let mut b = round_trip();
    b["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]
        ["toolResults"][0]["content"] = json!([{"json": {"temperature": 18}}]);
    assert_eq!(chat(&mock, &b).await.status, 200);
}

#[tokio::test]
async fn history_must_alternate_and_end_with_the_assistant() {
    let mock = mock().await;
    let u = json!({"userInputMessage": user("Hi")});
    let a = json!({"assistantResponseMessage": {"content": "Hello"}});
    let cases = [
        (
            vec![a.clone(), u.clone()],
            "conversationState.history[0]: history must start with a userInputMessage",
        ),
        (
            vec![u.clone(), a.clone(), a.clone()],
            "conversationState.history[2]: history must alternate, but two assistant messages follow each other",
        ),
        (
            vec![u.clone(), u.clone()],
            "conversationState.history[1]: history must alternate, but two user messages follow each other",
        ),
        (
            vec![u.clone(), a.clone(), u.clone()],
            "conversationState.history[2]: history must end with an assistantResponseMessage",
        ),
        (
            vec![u.clone(), json!({})],
            "conversationState.history[1] must hold `assistantResponseMessage` after a user message",
        ),
    ];
    for (history, expected) in cases {
        assert_eq!(
            improper(&mock, &body(history, user("Next"))).await,
            expected
        );
    }
}

#[tokio::test]
async fn empty_assistant_content_is_a_422() {
    let mock = mock().await;
    let b = body(
        vec![
            json!({"userInputMessage": user("Hi")}),
            json!({"assistantResponseMessage": {"content": ""}}),
        ],
        user("Next"),
    );
    let (status, message, reason, detail) = refuse(&mock, &b).await;
    assert_eq!(
        (status, message.as_str(), reason),
        (422, "Improperly formed request.", Value::Null)
    );
    assert_eq!(
        detail,
        "conversationState.history[1].assistantResponseMessage.content is empty"
    );
}

#[tokio::test]
async fn malformed_tool_uses_are_an_invalid_tool_use_format() {
    let mock = mock().await;
    let with_use = |tool_use: Value| {
        let mut b = round_trip();
        b["conversationState"]["history"][1]["assistantResponseMessage"]["toolUses"] =
            json!([tool_use]);
        b
    };
    let cases = [
        (
            with_use(json!({"toolUseId": "tooluse_1", "name": "get_weather", "input": "{\"city\":1}"})),
            "conversationState.history[1].assistantResponseMessage.toolUses[0].input must be a JSON object",
        ),
        (
            with_use(json!({"toolUseId": "tooluse_1", "input": {}})),
            "conversationState.history[1].assistantResponseMessage.toolUses[0].name must be a non-empty string",
        ),
        (
            with_use(json!({"toolUseId": "", "name": "get_weather", "input": {}})),
            "conversationState.history[1].assistantResponseMessage.toolUses[0].toolUseId must be a non-empty string",
        ),
        (
            with_use(json!("get_weather")),
            "conversationState.history[1].assistantResponseMessage.toolUses[0] must be an object",
        ),
    ];
    for (b, expected) in cases {
        let (status, message, reason, detail) = refuse(&mock, &b).await;
        assert_eq!(
            (status, message.as_str(), reason),
            (
                400,
                "Invalid tool use format.",
                json!("REQUEST_BODY_INVALID")
            )
        );
        assert_eq!(detail, expected);
    }
    // The same id twice in one turn.
    let mut b = round_trip();
    let uses = &mut b["conversationState"]["history"][1]["assistantResponseMessage"]["toolUses"];
    let first = uses[0].clone();
    uses.as_array_mut().unwrap().push(first);
    let (_, message, _, detail) = refuse(&mock, &b).await;
    assert_eq!(message, "Invalid tool use format.");
    assert_eq!(
        detail,
        "conversationState.history[1].assistantResponseMessage.toolUses[1]: toolUseId `tooluse_1` appears twice in toolUses"
    );
}

#[tokio::test]
async fn tool_uses_and_results_must_pair_up() {
    let mock = mock().await;
    let current = "conversationState.currentMessage.userInputMessage";
    let results =
        "/conversationState/currentMessage/userInputMessage/userInputMessageContext/toolResults";

    // A tool use without its result.
    let mut b = round_trip();
    *b.pointer_mut(results).unwrap() = json!([]);
    assert_eq!(
        improper(&mock, &b).await,
        format!("conversationState.history[1].assistantResponseMessage: toolUse `tooluse_1` (get_weather) has no toolResult in {current}")
    );

    // A result answering a tool use nobody made.
    let mut b = round_trip();
    b.pointer_mut(results).unwrap()[0]["toolUseId"] = json!("tooluse_other");
    assert_eq!(
        improper(&mock, &b).await,
        format!("conversationState.history[1].assistantResponseMessage: toolUse `tooluse_1` (get_weather) has no toolResult in {current}")
    );
    let mut b = round_trip();
    let extra = json!({"toolUseId": "tooluse_other", "content": [{"text": "?"}]});
    b.pointer_mut(results)
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(extra);
    assert_eq!(
        improper(&mock, &b).await,
        format!("{current}: toolResult `tooluse_other` answers no toolUse of the turn before")
    );

    // A result in a first turn: there is no turn before.
    let mut first = user("Here");
    first["userInputMessageContext"] =
        json!({"toolResults": [{"toolUseId": "tooluse_1", "content": [{"text": "x"}]}]});
    assert_eq!(
        improper(&mock, &body(vec![], first)).await,
        format!("{current}: toolResult `tooluse_1` answers no toolUse of the turn before")
    );

    // The result must come in the very next user turn, not later.
    let mut b = round_trip();
    let history = b["conversationState"]["history"].as_array_mut().unwrap();
    history.push(json!({"userInputMessage": user("Never mind")}));
    history.push(json!({"assistantResponseMessage": {"content": "OK"}}));
    assert_eq!(
        improper(&mock, &b).await,
        "conversationState.history[1].assistantResponseMessage: toolUse `tooluse_1` (get_weather) has no toolResult in conversationState.history[2].userInputMessage"
    );

    // The same result twice.
    let mut b = round_trip();
    let list = b.pointer_mut(results).unwrap().as_array_mut().unwrap();
    let again = list[0].clone();
    list.push(again);
    assert_eq!(
        improper(&mock, &b).await,
        format!("{current}.userInputMessageContext.toolResults[1]: toolUseId `tooluse_1` appears twice in toolResults")
    );
}

#[tokio::test]
async fn tools_used_in_history_must_be_declared() {
    let mock = mock().await;
    let mut b = round_trip();
    b["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]
        .as_object_mut()
        .unwrap()
        .remove("tools");
    assert_eq!(
        improper(&mock, &b).await,
        "conversationState.history[1].assistantResponseMessage: tool `get_weather` is used in history but not declared in conversationState.currentMessage.userInputMessage.userInputMessageContext.tools"
    );
    // Case does not matter.
    let mut b = round_trip();
    b["conversationState"]["currentMessage"]["userInputMessage"]["userInputMessageContext"]
        ["tools"][0]["toolSpecification"]["name"] = json!("Get_Weather");
    assert_eq!(chat(&mock, &b).await.status, 200);
}

#[tokio::test]
async fn tool_specifications_are_checked() {
    let mock = mock().await;
    let with_tool = |tool: Value| {
        let mut current = user("Hi");
        current["userInputMessageContext"] = json!({ "tools": [tool] });
        body(vec![], current)
    };
    let spec = "conversationState.currentMessage.userInputMessage.userInputMessageContext.tools[0].toolSpecification";
    let schema = |json: Value| json!({"toolSpecification": {"name": "t", "description": "d", "inputSchema": {"json": json}}});
    let cases = [
        (
            json!({"type": "web_search_20250305", "name": "web_search"}),
            format!("{spec} is missing"),
        ),
        (
            json!({"toolSpecification": {"name": "x".repeat(65), "description": "d",
                   "inputSchema": {"json": {"type": "object"}}}}),
            format!("{spec}.name must be 1 to 64 characters, not 65"),
        ),
        (
            json!({"toolSpecification": {"name": "", "description": "d",
                   "inputSchema": {"json": {"type": "object"}}}}),
            format!("{spec}.name must be 1 to 64 characters, not 0"),
        ),
        (
            json!({"toolSpecification": {"name": "t", "inputSchema": {"json": {}}}}),
            format!("{spec}.description is missing"),
        ),
        (
            json!({"toolSpecification": {"name": "t", "description": "d", "inputSchema": {}}}),
            format!("{spec}.inputSchema.json is missing"),
        ),
        (
            schema(json!({"type": ""})),
            format!("{spec}.inputSchema.json.type is empty"),
        ),
        (
            schema(json!({})),
            format!("{spec}.inputSchema.json.type is missing"),
        ),
        (
            schema(json!({"properties": {"type": {"type": "string"}}})),
            format!("{spec}.inputSchema.json.type is missing"),
        ),
        (
            schema(json!({"type": "object", "properties": {}, "required": "a"})),
            format!("{spec}.inputSchema.json.required must be an array"),
        ),
        (
            schema(json!({"type": ["object"]})),
            format!("{spec}.inputSchema.json.type must be a string"),
        ),
        (
            schema(json!({"type": "object", "properties": []})),
            format!("{spec}.inputSchema.json.properties must be an object"),
        ),
        (
            schema(json!({"type": "object", "required": ["a", 1]})),
            format!("{spec}.inputSchema.json.required[1] must be a string"),
        ),
    ];
    for (tool, expected) in cases {
        assert_eq!(improper(&mock, &with_tool(tool)).await, expected);
    }
    // A 64-character name is fine.
    let tool = json!({"toolSpecification": {"name": "x".repeat(64), "description": "d",
                      "inputSchema": {"json": {"type": "object"}}}});
    assert_eq!(chat(&mock, &with_tool(tool)).await.status, 200);
}

#[tokio::test]
async fn oversized_input_is_too_long() {
    let mock = mock().await;
    mock.set_validation(Validation::strict().max_input_chars(100));
    let (status, message, reason, detail) =
        refuse(&mock, &body(vec![], user(&"é".repeat(101)))).await;
    assert_eq!(
        (status, message.as_str(), reason),
        (
            400,
            "Input is too long.",
            json!("CONTENT_LENGTH_EXCEEDS_THRESHOLD")
        )
    );
    assert_eq!(detail, "the input holds 101 characters, more than 100");
    // Characters, not bytes; tool results and history count too.
    assert_eq!(
        chat(&mock, &body(vec![], user(&"é".repeat(100))))
            .await
            .status,
        200
    );
    let mut b = round_trip();
    *b.pointer_mut(
        "/conversationState/currentMessage/userInputMessage/userInputMessageContext/toolResults/0/content/0/text",
    )
    .unwrap() = json!("x".repeat(90));
    let (_, message, _, _) = refuse(&mock, &b).await;
    assert_eq!(message, "Input is too long.");
}

#[tokio::test]
async fn the_default_limit_sits_between_what_kiro_took_and_refused() {
    let mock = mock().await;
    assert_eq!(
        chat(&mock, &body(vec![], user(&"a".repeat(710_000))))
            .await
            .status,
        200
    );
    let (_, message, _, _) = refuse(&mock, &body(vec![], user(&"a".repeat(720_000)))).await;
    assert_eq!(message, "Input is too long.");
}

#[tokio::test]
async fn model_ids_are_checked_only_against_a_given_table() {
    let mock = mock().await;
    // Without a table any non-empty modelId passes, as the gateway example's passthrough needs.
    let mut b = body(vec![], user("Hi"));
    b["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] =
        json!("claude-sonnet-4-5");
    assert_eq!(chat(&mock, &b).await.status, 200);
    let mut empty = b.clone();
    empty["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] = json!("");
    let (_, message, reason, detail) = refuse(&mock, &empty).await;
    assert_eq!(
        (message.as_str(), reason),
        (
            "Invalid model ID. Please select a different model to continue.",
            json!("INVALID_MODEL_ID")
        )
    );
    assert_eq!(
        detail,
        "conversationState.currentMessage.userInputMessage.modelId `` is not a model the mock serves"
    );

    mock.set_validation(Validation::strict().kiro_model_ids());
    let (status, message, reason, detail) = refuse(&mock, &b).await;
    assert_eq!(
        (status, message.as_str(), reason),
        (
            400,
            "Invalid model ID. Please select a different model to continue.",
            json!("INVALID_MODEL_ID")
        )
    );
    assert_eq!(
        detail,
        "conversationState.currentMessage.userInputMessage.modelId `claude-sonnet-4-5` is not a model the mock serves"
    );
    for id in KIRO_MODEL_IDS {
        b["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] = json!(id);
        assert_eq!(chat(&mock, &b).await.status, 200, "{id}");
    }
    // History turns are checked too.
    let mut b = body(
        vec![
            json!({"userInputMessage": {"content": "Hi", "modelId": "gpt-4"}}),
            json!({"assistantResponseMessage": {"content": "Hello"}}),
        ],
        user("Next"),
    );
    let (_, _, _, detail) = refuse(&mock, &b).await;
    assert_eq!(
        detail,
        "conversationState.history[0].userInputMessage.modelId `gpt-4` is not a model the mock serves"
    );
    mock.set_validation(Validation::strict().model_ids(["gpt-4", "claude-sonnet-4.5"]));
    assert_eq!(chat(&mock, &b).await.status, 200);
    b["conversationState"]["history"][0]["userInputMessage"]["modelId"] = json!("claude-opus-4.5");
    assert_eq!(chat(&mock, &b).await.status, 400);
}

#[tokio::test]
async fn the_rejection_detail_header_is_ascii_even_for_unicode_names() {
    let mock = mock().await;
    mock.set_validation(Validation::strict().kiro_model_ids());
    let b = body(vec![], json!({"content": "Hi", "modelId": "模型\n"}));
    let (_, _, _, detail) = refuse(&mock, &b).await;
    assert_eq!(
        detail,
        "conversationState.currentMessage.userInputMessage.modelId `???` is not a model the mock serves"
    );
    // The recorded rejection keeps the exact text.
    let recorded = mock.requests();
    assert_eq!(
        recorded[0].rejection.as_deref(),
        Some("conversationState.currentMessage.userInputMessage.modelId `模型\n` is not a model the mock serves")
    );
}

#[tokio::test]
async fn lenient_validation_only_asks_for_json() {
    let mock = mock().await;
    mock.set_validation(Validation::lenient());
    assert!(!Validation::lenient().is_strict());
    assert_eq!(send(&mock, "{}").await.status, 200);
    assert_eq!(
        send(&mock, r#"{"conversationState":null}"#).await.status,
        200
    );
    let (status, message, _, _) = send(&mock, "{").await.refused();
    assert_eq!(
        (status, message.as_str()),
        (400, "Improperly formed request.")
    );
    mock.set_validation(Validation::default());
    assert!(Validation::default().is_strict());
    assert_eq!(send(&mock, "{}").await.status, 400);
}
