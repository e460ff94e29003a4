//! However a server groups its tokens into stream chunks, the client reads the same answer,
//! reasoning, finish reason and token counts. (The SSE parser's own property test covers byte
//! splits; this covers chunking as real servers vary it, end to end through the client.)

mod common;

use tandem::backend::client::Usage;
use tandem::fake_server::{Dialect, FakeServer, Reply};

use common::{PATIENT, chat, request};

/// Tokens per chunk to compare; neither 3 nor 7 divides the 44 tokens sent (5 of reasoning,
/// 39 of answer), so the last chunk is short and one chunk carries reasoning and answer both.
const CHUNKINGS: [usize; 3] = [1, 3, 7];

/// An answer with multi-byte characters, quotes and newlines, 154 characters long.
fn answer() -> String {
    let text =
        "{\"summary\": \"Revenue — North leads (412 350 €); ✓ cleaned\",\n \"note\": \"数据 ok\"}";
    text.repeat(2)
}

#[derive(Debug, PartialEq)]
struct Read {
    content: String,
    reasoning: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

async fn read_with(dialect: Dialect, tokens_per_chunk: usize, max_tokens: u32) -> Read {
    let server = FakeServer::builder()
        .dialect(dialect)
        .tokens_per_chunk(tokens_per_chunk)
        .decode_tok_per_s(20_000.0)
        .reasoning_tokens(5)
        .prompt_tokens(321)
        .reply(Reply::fixed(answer()))
        .start()
        .await;
    let outcome = chat(&server, PATIENT, &request("Grade this.", max_tokens)).await;
    Read {
        content: outcome.content,
        reasoning: outcome.reasoning,
        finish_reason: outcome.finish_reason,
        usage: outcome.usage,
    }
}

#[tokio::test]
async fn content_and_usage_are_the_same_whatever_the_chunking() {
    for dialect in [Dialect::LlamaCpp, Dialect::Mlx, Dialect::Vllm] {
        let one_by_one = read_with(dialect, 1, 1024).await;
        assert_eq!(one_by_one.content, answer(), "{dialect:?}");
        assert_eq!(one_by_one.reasoning.chars().count(), 20, "{dialect:?}");
        assert_eq!(one_by_one.finish_reason.as_deref(), Some("stop"));
        let usage = one_by_one.usage.expect("the server reports usage");
        let answer_tokens = answer().chars().count().div_ceil(4) as u64;
        assert_eq!(usage.completion_tokens, 5 + answer_tokens, "{dialect:?}");
        assert_eq!(usage.prompt_tokens, 321, "{dialect:?}");

        for chunking in CHUNKINGS {
            let read = read_with(dialect, chunking, 1024).await;
            assert_eq!(read, one_by_one, "{dialect:?}, {chunking} tokens per chunk");
        }
    }
}

#[tokio::test]
async fn a_reply_cut_at_max_tokens_is_the_same_whatever_the_chunking() {
    let reference = read_with(Dialect::Vllm, 1, 20).await;
    assert_eq!(reference.finish_reason.as_deref(), Some("length"));
    assert_eq!(reference.usage.unwrap().completion_tokens, 20);
    assert_eq!(reference.content.chars().count(), 4 * (20 - 5));
    for chunking in CHUNKINGS {
        assert_eq!(read_with(Dialect::Vllm, chunking, 20).await, reference);
    }
}
