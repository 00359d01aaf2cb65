//! `tsbridge serve --config FILE`: a TOML file whose keys are the flags' names with `_`
//! (`ice_udp = "0.0.0.0:8189"`, `replay = ["cam=cam.ts"]`, `view_token = "…"`). It sits under
//! the command line and the environment: a key is used only when neither gives its flag, so the
//! precedence is flag > environment > file > default. An unknown key is an error naming it.
//!
//! It works on the arguments before clap parses them: each key of the file becomes the flag it
//! names, appended to the `serve` arguments, so the file takes exactly what the flag takes
//! (same parsers, same errors) and a new flag needs nothing here.

use std::ffi::OsString;
use std::path::Path;

use clap::CommandFactory;

use super::Cli;

/// The program's arguments with the config file's keys added as flags (when `serve` has
/// `--config FILE`, or `TSBRIDGE_CONFIG` is set). Anything else passes unchanged.
pub fn with_config_file(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(serve_at) = args.iter().position(|a| a == "serve") else {
        return Ok(args);
    };
    let file = config_path(&args[serve_at + 1..])
        .or_else(|| std::env::var_os("TSBRIDGE_CONFIG").filter(|v| !v.is_empty()));
    let Some(file) = file else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "cannot read config file {}: {e}",
            Path::new(&file).display()
        )
    })?;
    let extra = flags_from_toml(&text, &args[serve_at + 1..], |name| std::env::var_os(name))
        .map_err(|e| format!("config file {}: {e}", Path::new(&file).display()))?;
    let mut out = args;
    out.splice(serve_at + 1..serve_at + 1, extra);
    Ok(out)
}

/// `--config FILE` / `--config=FILE` among the `serve` arguments.
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = a.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(v.into());
        }
    }
    None
}

/// The flags a config file stands for, leaving out those the command line (`given`) or the
/// environment (`env`) already sets.
pub fn flags_from_toml(
    text: &str,
    given: &[OsString],
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let cli = Cli::command();
    let mut serve = cli
        .find_subcommand("serve")
        .ok_or("no serve command")?
        .clone();
    // Built, so that each argument knows how many values it takes.
    serve.build();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| {
                format!(
                    "unknown key {key:?}: the keys are `tsbridge serve` flags with _ for - \
                     (e.g. ice_udp, view_token, replay = [\"cam=file.ts\"])"
                )
            })?;
        let on_command_line = given.iter().any(|a| {
            let a = a.to_string_lossy();
            a == format!("--{long}") || a.starts_with(&format!("--{long}="))
        });
        let in_env = arg
            .get_env()
            .and_then(|name| name.to_str())
            .is_some_and(|name| env(name).is_some_and(|v| !v.is_empty()));
        if on_command_line || in_env {
            continue;
        }
        let flag = format!("--{long}");
        let takes_value = arg.get_num_args().is_none_or(|n| n.takes_values());
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    out.push(OsString::from(&flag));
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    out.push(OsString::from(format!("{flag}={}", scalar(key, item)?)));
                }
            }
            v => out.push(OsString::from(format!("{flag}={}", scalar(key, v)?))),
        }
    }
    Ok(out)
}

fn scalar(key: &str, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(format!(
            "key {key:?}: a string, number, boolean or a list of them"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Command, ServeArgs};

    fn parse(args: &[OsString]) -> ServeArgs {
        let mut all = vec![OsString::from("tsbridge"), OsString::from("serve")];
        all.extend(args.iter().cloned());
        match Cli::try_parse_from(all).map(|c| c.command) {
            Ok(Command::Serve(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    use clap::Parser;

    /// Every `serve` flag, with a value other than its default: in the file, then as flags.
    const EVERY_FLAG: &str = r#"
listen = "127.0.0.1:9000"
ice_udp = "127.0.0.1:9001"
ice_host = ["192.0.2.1", "example.net"]
ice_server = ["stun:stun.example.net:3478", "turn:turn.example.net:3478"]
ice_username = "user"
ice_credential = "pass"
replay = ["a=a.ts", "b=b.ts"]
udp = ["u=127.0.0.1:5000"]
udp_reorder_ms = 30
srt_listen = "127.0.0.1:8890"
srt_passphrase = "0123456789ab"
srt_latency_ms = 200
srt_pull = ["p=srt://127.0.0.1:9000?streamid=x", "q=srt://127.0.0.1:9001"]
stdin = "in"
whep_wait = 3
demo = true
pipeline = "cat"
source_grace = 4
publish_token = "p"
view_token = "v"
admin_token = "adm"
metrics_token = "m"
auth_hook = "http://127.0.0.1:1/auth"
auth_hook_timeout = 2
event_hook = "http://127.0.0.1:1/events"
data_dir = "/tmp/tsbridge-data"
tls_cert = "cert.pem"
tls_key = "key.pem"
trusted_proxy = ["127.0.0.1", "10.0.0.1"]
log_format = "json"
max_sessions = 7
max_viewers = 8
max_waiting = 9
audio_transcode = "off"
video_transcode = "off"
ring_bytes = 1000000
http_timeout = 5
max_connections = 11
max_body = 12345
ice_timeout = 6
media_threads = 1
no_direct_send = true
backlog_rate = 12.5
gop_cache_max = "4,8MiB"
playout_delay = "0,100"
whip_jitter_ms = "20,200"
cluster = "redis://127.0.0.1:6379/0"
public_url = "http://10.0.0.5:8889"
cluster_token = "c"
turn_secret = "t"
turn_ttl = 60
max_streams = 13
max_per_ip = 14
max_ts_readers = 15
ingest_idle = 16
"#;

    #[test]
    fn the_file_round_trips_every_flag() {
        let no_env = |_: &str| None;
        let from_file = parse(&flags_from_toml(EVERY_FLAG, &[], no_env).unwrap());
        let table: toml::Table = EVERY_FLAG.parse().unwrap();
        // The same as flags on the command line.
        let mut flags = Vec::new();
        for (k, v) in &table {
            let flag = format!("--{}", k.replace('_', "-"));
            match v {
                toml::Value::Array(a) => {
                    for x in a {
                        flags.push(OsString::from(format!("{flag}={}", scalar(k, x).unwrap())));
                    }
                }
                toml::Value::Boolean(true) => flags.push(flag.into()),
                v => flags.push(format!("{flag}={}", scalar(k, v).unwrap()).into()),
            }
        }
        let from_flags = parse(&flags);
        assert_eq!(format!("{from_file:?}"), format!("{from_flags:?}"));
        // And the list covers every flag `serve` has.
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "config" || long == "help" {
                continue;
            }
            assert!(
                table.contains_key(&long.replace('-', "_")),
                "the config file test misses --{long}"
            );
        }
        assert_ne!(
            format!("{from_file:?}"),
            format!("{:?}", parse(&[])),
            "values differ from the defaults"
        );
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let text = "view_token = \"file\"\nmax_viewers = 5\nlisten = \"127.0.0.1:1\"\n";
        let given = [OsString::from("--max-viewers=6")];
        let env = |name: &str| (name == "TSBRIDGE_LISTEN").then(|| OsString::from("x"));
        let extra = flags_from_toml(text, &given, env).unwrap();
        assert_eq!(extra, [OsString::from("--view-token=file")]);
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = flags_from_toml("ice_udpp = \"x\"\n", &[], |_| None).unwrap_err();
        assert!(e.contains("\"ice_udpp\""), "{e}");
        let e = flags_from_toml("listen = = 3\n", &[], |_| None).unwrap_err();
        assert!(!e.is_empty());
    }
}
