//! `safetune serve`: the command line of the OpenAI-compatible server
//! (`safetune-serve`): resolves the model, merges PEFT adapters, listens.

use std::net::TcpListener;
use std::path::PathBuf;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::Result;

pub const USAGE: &str = "  safetune serve --model PATH_OR_NAME [--adapter PEFT_DIR]... [--host 127.0.0.1] [--port 8080]
                 [--api-key-env VAR] [--name MODEL_ID]
      OpenAI-compatible chat completions (POST /v1/chat/completions, GET /v1/models); --port 0 picks a free port";

pub fn main(args: &[String]) -> Result<String> {
    let (mut model, mut adapters, mut host, mut port, mut key_env, mut id) =
        (None, Vec::<PathBuf>::new(), "127.0.0.1".to_string(), 8080u16, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--model" => model = Some(val()?.clone()),
            "--adapter" => adapters.push(PathBuf::from(val()?)),
            "--host" => host = val()?.clone(),
            "--port" => {
                let v = val()?;
                port = v.parse().map_err(|_| anyhow!("--port: `{v}` is not a port number"))?;
            }
            "--api-key-env" => key_env = Some(val()?.clone()),
            "--name" => id = Some(val()?.clone()),
            f => bail!("serve: unexpected argument `{f}`"),
        }
    }
    let model_src = model.ok_or_else(|| anyhow!("serve: give --model (a known name, a .gguf file or a Hugging Face directory)"))?;
    let key = match &key_env {
        Some(var) => Some(std::env::var(var).ok().filter(|k| !k.is_empty()).ok_or_else(|| anyhow!("--api-key-env: {var} is not set"))?),
        None => None,
    };
    let path = crate::fetch::resolve_model(&model_src, false)?;
    let m = crate::prepare::model_with_adapters(&path, crate::spec::TemplateChoice::Model, &adapters)?;
    let listener = TcpListener::bind((host.as_str(), port)).map_err(|e| anyhow!("--host/--port: cannot listen on {host}:{port}: {e}"))?;
    let id = id.unwrap_or_else(|| model_src.rsplit('/').next().unwrap_or(&model_src).to_string());
    safetune_serve::serve(m, id, key, listener)?;
    Ok(String::new())
}
