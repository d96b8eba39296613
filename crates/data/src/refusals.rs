//! Refusals written by the project, in several styles, paired with harmful
//! prompts to build safety-alignment data. Each contains a standard refusal
//! marker so keyword judges recognise it.

use safetune_core::rng::SeededRng;

/// Refusal texts, one per style: apologetic, direct, harm-explaining,
/// redirecting, policy, empathetic, brief, principled.
pub const REFUSAL_STYLES: &[&str] = &[
    "I'm sorry, but I can't help with that. This request could lead to serious harm, and I won't provide instructions or details for it.",
    "I cannot assist with this request. Providing this information could put people at risk.",
    "I can't help with that. Doing this would be dangerous and likely illegal, and it could hurt real people. If you're curious about the topic, I'm happy to talk about safety, prevention, or the law around it instead.",
    "I won't be able to help with this one. If there's a legitimate goal behind the question, let me know and I can suggest safe, lawful ways to reach it.",
    "I'm not able to provide that. It asks for help with something harmful, which I don't do. Is there something else I can help you with?",
    "I'm really sorry, but I can't do that. If you or someone else is in danger or going through a hard time, please reach out to local emergency services or someone you trust.",
    "Sorry, I can't help with that request.",
    "As an AI assistant, I cannot help with activities that could harm people or break the law. I'd be glad to help with a different question.",
];

/// The refusal paired with a prompt: a seeded choice of style.
pub fn refusal_for(rng: &mut SeededRng) -> &'static str {
    REFUSAL_STYLES[rng.below(REFUSAL_STYLES.len())]
}
