//! Prompt formats: how a (system, user, assistant) turn becomes model text.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A chat or instruction template. The prompt part ends exactly where the
/// model's answer starts, so `prompt + response + end` is the training text
/// and only the response (and its end marker) carries loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFormat {
    /// `<|im_start|>role\n...<|im_end|>\n` (SmolLM2, Qwen2).
    Chatml,
    /// Llama-2 chat: `[INST] <<SYS>>...<</SYS>> ... [/INST]`.
    Llama2,
    /// Llama-3 chat headers.
    Llama3,
    /// The Alpaca instruction template used by SafeTuneBed.
    Alpaca,
}

impl PromptFormat {
    pub fn default_system(self) -> Option<&'static str> {
        match self {
            Self::Chatml => Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
            Self::Llama2 | Self::Llama3 | Self::Alpaca => None,
        }
    }

    /// The text up to where the assistant's answer begins.
    /// `system`: `None` is the format's default; an empty one renders no system turn.
    pub fn prompt(self, system: Option<&str>, user: &str) -> String {
        let system = match system {
            Some("") => None,
            Some(s) => Some(s),
            None => self.default_system(),
        };
        match self {
            Self::Chatml => {
                let mut s = String::new();
                if let Some(sys) = system {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                s.push_str(&format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"));
                s
            }
            Self::Llama2 => match system {
                Some(sys) => format!("<s>[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{user} [/INST] "),
                None => format!("<s>[INST] {user} [/INST] "),
            },
            Self::Llama3 => {
                let mut s = String::from("<|begin_of_text|>");
                if let Some(sys) = system {
                    s.push_str(&format!("<|start_header_id|>system<|end_header_id|>\n\n{sys}<|eot_id|>"));
                }
                s.push_str(&format!(
                    "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                ));
                s
            }
            Self::Alpaca => {
                let head = system
                    .unwrap_or("Below is an instruction that describes a task. Write a response that appropriately completes the request.");
                format!("{head}\n\n### Instruction:\n{user}\n\n### Response:\n")
            }
        }
    }

    /// The marker that closes an assistant turn (trained on, stops generation).
    pub fn end_of_turn(self) -> &'static str {
        match self {
            Self::Chatml => "<|im_end|>",
            Self::Llama2 => " </s>",
            Self::Llama3 => "<|eot_id|>",
            Self::Alpaca => "</s>",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_matches_smollm2_template() {
        let p = PromptFormat::Chatml.prompt(None, "Hi");
        assert_eq!(
            p,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(PromptFormat::Chatml.prompt(Some("S"), "u").starts_with("<|im_start|>system\nS<|im_end|>"));
        assert_eq!(PromptFormat::Chatml.prompt(Some(""), "u"), "<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn every_format_puts_the_user_text_before_the_answer() {
        for f in [PromptFormat::Chatml, PromptFormat::Llama2, PromptFormat::Llama3, PromptFormat::Alpaca] {
            let p = f.prompt(None, "USERTEXT");
            assert!(p.contains("USERTEXT"), "{f:?}");
            assert!(!p.ends_with("USERTEXT"), "{f:?} must open the answer");
        }
        assert!(PromptFormat::Llama2.prompt(None, "q").contains("[/INST]"));
        assert!(PromptFormat::Alpaca.prompt(None, "q").ends_with("### Response:\n"));
    }
}
