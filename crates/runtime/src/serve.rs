//! `safetune serve`: the command line of the OpenAI-compatible server
//! (`safetune-serve`): resolves the model, merges PEFT adapters, replaces weights, listens.

use std::net::TcpListener;

use safetune_core::anyhow::anyhow;
use safetune_core::Result;

/// `safetune serve`'s flags.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A known model name, a .gguf file or a Hugging Face directory
    #[arg(long, value_name = "PATH_OR_NAME")]
    model: String,
    #[command(flatten)]
    parts: crate::prepare::AddedWeights,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0: a free one)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The environment variable holding the API key clients must send
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// The model id clients see [default: the model's file or directory name]
    #[arg(long, value_name = "MODEL_ID")]
    name: Option<String>,
}

pub fn main(args: ServeArgs) -> Result<String> {
    let ServeArgs { model: model_src, parts, host, port, api_key_env: key_env, name: id } = args;
    let key = match &key_env {
        Some(var) => Some(std::env::var(var).ok().filter(|k| !k.is_empty()).ok_or_else(|| anyhow!("--api-key-env: {var} is not set"))?),
        None => None,
    };
    let path = crate::fetch::resolve_model(&model_src, false)?;
    parts.check(&safetune_model::check_model(&path)?.config)?;
    let m = crate::prepare::model_with(&path, crate::spec::TemplateChoice::Model, &parts)?;
    let listener = TcpListener::bind((host.as_str(), port)).map_err(|e| anyhow!("--host/--port: cannot listen on {host}:{port}: {e}"))?;
    let id = id.unwrap_or_else(|| model_src.rsplit('/').next().unwrap_or(&model_src).to_string());
    safetune_serve::serve(m, id, key, listener)?;
    Ok(String::new())
}
