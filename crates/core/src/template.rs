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

    /// The text up to the assistant's answer to the last user turn of a
    /// conversation: `turns` are earlier (user, assistant) exchanges, `user` the
    /// new request. With no earlier turns it is [`PromptFormat::prompt`]; chat
    /// formats render later turns as their `chat_template` does (checked by a
    /// test), Alpaca as another `### Instruction:` block after the answer.
    pub fn conversation(self, system: Option<&str>, turns: &[(&str, &str)], user: &str) -> String {
        let Some(((first, _), _)) = turns.split_first() else {
            return self.prompt(system, user);
        };
        let mut s = self.prompt(system, first);
        let users = turns.iter().skip(1).map(|(u, _)| *u).chain(std::iter::once(user));
        for ((_, answer), next) in turns.iter().zip(users) {
            s.push_str(answer);
            s.push_str(&match self {
                Self::Chatml => format!("<|im_end|>\n<|im_start|>user\n{next}<|im_end|>\n<|im_start|>assistant\n"),
                Self::Llama2 => format!(" </s><s>[INST] {next} [/INST] "),
                Self::Llama3 => format!(
                    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{next}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                ),
                Self::Alpaca => format!("</s>\n\n### Instruction:\n{next}\n\n### Response:\n"),
            });
        }
        s
    }

    /// This format as a Hugging Face `chat_template` (Jinja), for exported
    /// models: a conversation of one user turn, with or without a system turn,
    /// renders exactly as [`PromptFormat::prompt`] (the format's default system
    /// prompt when the first message is not a system one, no system turn for an
    /// empty one, the assistant's opening when `add_generation_prompt`); later
    /// turns follow the same shape. `None` for Alpaca, which is not a chat format.
    pub fn chat_template(self) -> Option<String> {
        // An empty system message renders no system turn, as in `prompt`.
        let skip = "m['role'] == 'system' and m['content'] == ''";
        let default = |open: &str, close: &str| match self.default_system() {
            Some(sys) => format!("{{% if messages[0]['role'] != 'system' %}}{open}{sys}{close}{{% endif %}}"),
            None => String::new(),
        };
        match self {
            Self::Chatml => Some(format!(
                "{}{{% for m in messages %}}{{% if not ({skip}) %}}<|im_start|>{{{{ m['role'] }}}}\n{{{{ m['content'] }}}}<|im_end|>\n{{% endif %}}{{% endfor %}}{{% if add_generation_prompt %}}<|im_start|>assistant\n{{% endif %}}",
                default("<|im_start|>system\n", "<|im_end|>\n")
            )),
            Self::Llama3 => Some(format!(
                "<|begin_of_text|>{}{{% for m in messages %}}{{% if not ({skip}) %}}<|start_header_id|>{{{{ m['role'] }}}}<|end_header_id|>\n\n{{{{ m['content'] }}}}<|eot_id|>{{% endif %}}{{% endfor %}}{{% if add_generation_prompt %}}<|start_header_id|>assistant<|end_header_id|>\n\n{{% endif %}}",
                default("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>")
            )),
            // Llama-2 folds the system prompt into the first [INST] block.
            Self::Llama2 => Some(format!(
                "{{% for m in messages %}}{{% if m['role'] == 'user' %}}<s>[INST] {{% if loop.index0 == 1 and messages[0]['role'] == 'system' and messages[0]['content'] != '' %}}<<SYS>>\n{{{{ messages[0]['content'] }}}}\n<</SYS>>\n\n{{% endif %}}{{{{ m['content'] }}}} [/INST] {{% elif m['role'] == 'assistant' %}}{{{{ m['content'] }}}}{}{{% endif %}}{{% endfor %}}",
                Self::Llama2.end_of_turn()
            )),
            Self::Alpaca => None,
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

    /// `f`'s chat template rendered by a Jinja engine as transformers renders it: a system
    /// message when `system` is given, then `turns` (role, text), the generation prompt on.
    fn render(f: PromptFormat, system: Option<&str>, turns: &[(&str, &str)]) -> String {
        let mut env = minijinja::Environment::new();
        let template = f.chat_template().unwrap();
        env.add_template("t", &template).unwrap();
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(serde_json::json!({ "role": "system", "content": s }));
        }
        for (role, text) in turns {
            messages.push(serde_json::json!({ "role": role, "content": text }));
        }
        let ctx = serde_json::json!({ "messages": messages, "add_generation_prompt": true });
        env.get_template("t").unwrap().render(&ctx).unwrap()
    }

    const CHAT: [PromptFormat; 3] = [PromptFormat::Chatml, PromptFormat::Llama2, PromptFormat::Llama3];
    const SYSTEMS: [Option<&str>; 3] = [None, Some(""), Some("Be brief.")];

    /// Each chat template gives exactly `prompt`'s text: default, empty and given system prompts.
    #[test]
    fn chat_templates_render_as_prompt_does() {
        for f in CHAT {
            for system in SYSTEMS {
                // Llama-2's assistant opening is the prompt's end: nothing to add.
                assert_eq!(render(f, system, &[("user", "Hi there")]), f.prompt(system, "Hi there"), "{f:?} with system {system:?}");
            }
        }
        assert!(PromptFormat::Alpaca.chat_template().is_none());
    }

    /// A two-turn conversation renders as each chat template renders it.
    #[test]
    fn conversations_render_as_chat_templates_do() {
        let turns = [("user", "Hi"), ("assistant", "Hello!"), ("user", "And now?"), ("assistant", "Now this."), ("user", "Bye")];
        for f in CHAT {
            for system in SYSTEMS {
                let want = f.conversation(system, &[("Hi", "Hello!"), ("And now?", "Now this.")], "Bye");
                assert_eq!(render(f, system, &turns), want, "{f:?} with system {system:?}");
            }
            assert_eq!(f.conversation(None, &[], "Hi"), f.prompt(None, "Hi"));
        }
        let a = PromptFormat::Alpaca.conversation(None, &[("q1", "a1")], "q2");
        assert!(
            a.starts_with(&PromptFormat::Alpaca.prompt(None, "q1")) && a.ends_with("a1</s>\n\n### Instruction:\nq2\n\n### Response:\n")
        );
    }

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
