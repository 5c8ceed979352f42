//! Parsing of the units users type: cpu (`2`, `0.5`, `500m`), sizes (`4GiB`, `512MB`),
//! durations (`30s`, `1h30m`) and GPU amounts (`2` whole GPUs, `0.5` of one).

use std::time::Duration;

use testmesh_consensus::resources::{GpuRequest, WHOLE_GPU_MILLI};
use testmesh_consensus::{Bytes, MilliCpu};

pub fn parse_cpu(s: &str) -> Result<MilliCpu, String> {
    let t = s.trim();
    let bad =
        || format!("invalid cpu amount {s:?}: use cores like 2 or 0.5, or millicores like 500m");
    let milli = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let v: f64 = t.parse().map_err(|_| bad())?;
        if !v.is_finite() || !(0.0..=1e6).contains(&v) {
            return Err(bad());
        }
        (v * 1000.0).round() as u64
    };
    Ok(MilliCpu(milli))
}

pub fn parse_size(s: &str) -> Result<Bytes, String> {
    let t = s.trim();
    if t.is_empty() || t.starts_with('-') {
        return Err(format!(
            "invalid size {s:?}: use a number of bytes or a unit, like 512MiB, 4GiB or 2GB"
        ));
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| Bytes(b.as_u64()))
        .map_err(|_| {
            format!("invalid size {s:?}: use a number of bytes or a unit, like 512MiB, 4GiB or 2GB")
        })
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}): use a number with a unit, like 90s, 5m or 1h30m")
    })?;
    if d.is_zero() {
        return Err(format!(
            "invalid duration {s:?}: it must be longer than zero"
        ));
    }
    Ok(d)
}

/// Like [`parse_duration`], but `0` or `0s` is allowed (for "do not wait").
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" | "0s" => Ok(Duration::ZERO),
        _ => parse_duration(s),
    }
}

/// `2` is two whole GPUs; `0.5` is half of one GPU (its memory share is given separately).
pub fn parse_gpus(s: &str, share_memory: Bytes) -> Result<GpuRequest, String> {
    let bad = || {
        format!(
            "invalid GPU amount {s:?}: use a whole number like 1 or 2, or a share of one GPU like 0.5"
        )
    };
    let v: f64 = s.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    if v == 0.0 {
        return Ok(GpuRequest::None);
    }
    if v < 1.0 {
        let milli = (v * WHOLE_GPU_MILLI as f64).round() as u32;
        if milli == 0 || milli >= WHOLE_GPU_MILLI {
            return Err(bad());
        }
        return Ok(GpuRequest::Shared {
            milli,
            memory: share_memory,
        });
    }
    if v.fract() != 0.0 || v > 1024.0 {
        return Err(format!(
            "invalid GPU amount {s:?}: above 1 only whole GPUs can be requested (a share is below 1)"
        ));
    }
    Ok(GpuRequest::Whole { count: v as u32 })
}

/// `KEY=VALUE`, for labels, constraints and environment variables.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `--secret-env KEY=VALUE`, or `--secret-env KEY` to take the value from this process's
/// environment (the way CI systems hand out secrets: the value never appears on a command line).
pub fn parse_secret_env(s: &str) -> Result<(String, String), String> {
    if s.contains('=') {
        return parse_key_value(s);
    }
    let k = s.trim();
    if k.is_empty() {
        return Err("expected KEY=VALUE or the name of a variable set here".into());
    }
    std::env::var(k).map(|v| (k.to_string(), v)).map_err(|_| {
        format!("{k} is not set in this environment; give KEY=VALUE or export {k} first")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_accepts_cores_and_millicores() {
        assert_eq!(parse_cpu("2").unwrap(), MilliCpu(2000));
        assert_eq!(parse_cpu("0.25").unwrap(), MilliCpu(250));
        assert_eq!(parse_cpu("500m").unwrap(), MilliCpu(500));
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("two").unwrap_err().contains("500m"));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1GiB").unwrap(), Bytes(1 << 30));
        assert_eq!(parse_size("512MiB").unwrap(), Bytes(512 << 20));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-5GiB").is_err());
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn gpus_whole_and_shared() {
        assert_eq!(
            parse_gpus("2", Bytes(0)).unwrap(),
            GpuRequest::Whole { count: 2 }
        );
        assert_eq!(
            parse_gpus("0.5", Bytes(7)).unwrap(),
            GpuRequest::Shared {
                milli: 500,
                memory: Bytes(7)
            }
        );
        assert!(parse_gpus("1.5", Bytes(0)).is_err());
        assert_eq!(parse_gpus("0", Bytes(0)).unwrap(), GpuRequest::None);
    }
}
