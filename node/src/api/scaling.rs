//! `GET /api/v1/scaling` (instances, decisions, providers), `GET /api/v1/policy` and
//! `PUT /api/v1/policy` (token): the autoscaler as users see and steer it. Durations are
//! written like `30s`, money in dollars.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use testmesh_consensus::scaling::{
    CloudInstance, DecisionRecord, ProviderLimits, ScalingCommand, ScalingPolicy,
};
use testmesh_consensus::{Applied, Command};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::{Admin, AppState};

/// The policy with human units.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    pub enabled: bool,
    pub min_workers: u32,
    pub max_workers: u32,
    pub providers: Vec<String>,
    pub per_provider: BTreeMap<String, ProviderLimits>,
    pub scale_up_cooldown: String,
    pub scale_down_cooldown: String,
    pub target_utilisation_pct: u32,
    pub idle_timeout: String,
    pub idle_cpu_pct: u32,
    pub max_step: u32,
    /// Dollars per hour; null: no budget.
    pub budget_per_hour: Option<f64>,
    pub registration_deadline: String,
}

fn dur(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms))
        .to_string()
        .replace(' ', "")
}

impl From<&ScalingPolicy> for PolicyView {
    fn from(p: &ScalingPolicy) -> Self {
        PolicyView {
            enabled: p.enabled,
            min_workers: p.min_workers,
            max_workers: p.max_workers,
            providers: p.providers.clone(),
            per_provider: p.per_provider.clone(),
            scale_up_cooldown: dur(p.scale_up_cooldown_ms),
            scale_down_cooldown: dur(p.scale_down_cooldown_ms),
            target_utilisation_pct: p.target_utilisation_pct,
            idle_timeout: dur(p.idle_timeout_ms),
            idle_cpu_pct: p.idle_cpu_pct,
            max_step: p.max_step,
            budget_per_hour: p.budget_micros_per_hour.map(|m| m as f64 / 1e6),
            registration_deadline: dur(p.registration_deadline_ms),
        }
    }
}

/// `PUT /api/v1/policy`: only the fields given change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    pub enabled: Option<bool>,
    pub min_workers: Option<u32>,
    pub max_workers: Option<u32>,
    pub providers: Option<Vec<String>>,
    pub per_provider: Option<BTreeMap<String, ProviderLimits>>,
    pub scale_up_cooldown: Option<String>,
    pub scale_down_cooldown: Option<String>,
    pub target_utilisation_pct: Option<u32>,
    pub idle_timeout: Option<String>,
    pub idle_cpu_pct: Option<u32>,
    pub max_step: Option<u32>,
    /// A number of dollars per hour, or `"none"`.
    pub budget_per_hour: Option<serde_json::Value>,
    pub registration_deadline: Option<String>,
}

impl PolicyPatch {
    /// The policy with this patch applied, or what is wrong with the patch.
    pub fn apply(&self, p: &ScalingPolicy) -> Result<ScalingPolicy, String> {
        let mut p = p.clone();
        let ms = |what: &str, v: &Option<String>, into: &mut u64| -> Result<(), String> {
            if let Some(s) = v {
                *into = crate::units::parse_duration_or_zero(s)
                    .map_err(|e| format!("{what}: {e}"))?
                    .as_millis() as u64;
            }
            Ok(())
        };
        if let Some(v) = self.enabled {
            p.enabled = v;
        }
        if let Some(v) = self.min_workers {
            p.min_workers = v;
        }
        if let Some(v) = self.max_workers {
            p.max_workers = v;
        }
        if let Some(v) = &self.providers {
            p.providers = v.clone();
        }
        if let Some(v) = &self.per_provider {
            p.per_provider = v.clone();
        }
        ms(
            "scale_up_cooldown",
            &self.scale_up_cooldown,
            &mut p.scale_up_cooldown_ms,
        )?;
        ms(
            "scale_down_cooldown",
            &self.scale_down_cooldown,
            &mut p.scale_down_cooldown_ms,
        )?;
        ms("idle_timeout", &self.idle_timeout, &mut p.idle_timeout_ms)?;
        ms(
            "registration_deadline",
            &self.registration_deadline,
            &mut p.registration_deadline_ms,
        )?;
        if let Some(v) = self.target_utilisation_pct {
            p.target_utilisation_pct = v;
        }
        if let Some(v) = self.idle_cpu_pct {
            p.idle_cpu_pct = v;
        }
        if let Some(v) = self.max_step {
            p.max_step = v;
        }
        match &self.budget_per_hour {
            None => {}
            Some(serde_json::Value::String(s)) if s == "none" => p.budget_micros_per_hour = None,
            Some(serde_json::Value::Null) => p.budget_micros_per_hour = None,
            Some(v) => match v.as_f64() {
                Some(d) if d.is_finite() && d >= 0.0 => {
                    p.budget_micros_per_hour = Some((d * 1e6).round() as u64)
                }
                _ => {
                    return Err(format!(
                        "budget_per_hour {v}: use dollars per hour (e.g. 12.5) or \"none\""
                    ));
                }
            },
        }
        p.validate()?;
        Ok(p)
    }
}

pub async fn get_policy(State(st): State<AppState>) -> Json<PolicyView> {
    Json(PolicyView::from(st.core.ledger.read().scaling().policy()))
}

pub async fn put_policy(
    State(st): State<AppState>,
    _auth: Admin,
    ApiJson(patch): ApiJson<PolicyPatch>,
) -> Result<Json<PolicyView>, ApiError> {
    let current = st.core.ledger.read().scaling().policy().clone();
    let policy = patch.apply(&current).map_err(ApiError::BadRequest)?;
    let known: Vec<String> = st
        .core
        .catalogue
        .iter()
        .map(|t| t.provider.clone())
        .collect();
    if let Some(p) = policy.providers.iter().find(|p| !known.contains(p)) {
        return Err(ApiError::BadRequest(format!(
            "provider {p:?} has no instance types in the catalogue; add [[instance_types]] with provider = {p:?} to the node config"
        )));
    }
    let cmd = Command::Scaling {
        cmd: ScalingCommand::SetPolicy {
            policy: policy.clone(),
        },
        at: st.core.now(),
    };
    match st.core.writer.write(cmd).await?? {
        Applied::Scaling(_) => Ok(Json(PolicyView::from(&policy))),
        other => Err(ApiError::Unavailable(format!(
            "unexpected ledger answer {other:?}"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingQuery {
    /// Most decisions and ended instances returned (newest first); default 100.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct ScalingState {
    pub cluster_id: Option<String>,
    pub policy: PolicyView,
    /// Dollars per hour of the instances that have not ended.
    pub hourly_cost: f64,
    /// Live instances first, then the latest ended ones.
    pub instances: Vec<CloudInstance>,
    /// Newest first.
    pub decisions: Vec<DecisionRecord>,
    /// This node's scaler (the leader's is the one acting).
    pub scaler: crate::core::scaler::ScalerView,
}

pub async fn scaling(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ScalingQuery>,
) -> Result<Json<ScalingState>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest("limit: use 1..=1000".into()));
    }
    let l = st.core.ledger.read();
    let s = l.scaling();
    let mut instances: Vec<CloudInstance> = s
        .instances()
        .filter(|i| !i.state.is_ended())
        .cloned()
        .collect();
    instances.extend(
        s.instances()
            .rev()
            .filter(|i| i.state.is_ended())
            .take(limit)
            .cloned(),
    );
    Ok(Json(ScalingState {
        cluster_id: s.cluster_id().map(str::to_string),
        policy: PolicyView::from(s.policy()),
        hourly_cost: s
            .instances()
            .filter(|i| !i.state.is_ended())
            .map(|i| i.price_micros_per_hour)
            .sum::<u64>() as f64
            / 1e6,
        instances,
        decisions: s.decisions().rev().take(limit).cloned().collect(),
        scaler: crate::core::scaler::view(&st.core.scaler, st.core.clock.instant()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_changes_only_what_it_names_and_is_validated() {
        let base = ScalingPolicy::default();
        let p = PolicyPatch {
            max_workers: Some(4),
            idle_timeout: Some("30s".into()),
            budget_per_hour: Some(serde_json::json!(2.5)),
            ..Default::default()
        }
        .apply(&base)
        .unwrap();
        assert_eq!(p.max_workers, 4);
        assert_eq!(p.idle_timeout_ms, 30_000);
        assert_eq!(p.budget_micros_per_hour, Some(2_500_000));
        assert_eq!(p.min_workers, base.min_workers);
        let cleared = PolicyPatch {
            budget_per_hour: Some(serde_json::json!("none")),
            ..Default::default()
        }
        .apply(&p)
        .unwrap();
        assert_eq!(cleared.budget_micros_per_hour, None);
        let e = PolicyPatch {
            enabled: Some(true),
            ..Default::default()
        }
        .apply(&base)
        .unwrap_err();
        assert!(e.contains("at least one provider"), "{e}");
        let e = PolicyPatch {
            idle_timeout: Some("soon".into()),
            ..Default::default()
        }
        .apply(&base)
        .unwrap_err();
        assert!(e.starts_with("idle_timeout"), "{e}");
        let e = PolicyPatch {
            budget_per_hour: Some(serde_json::json!(-1)),
            ..Default::default()
        }
        .apply(&base)
        .unwrap_err();
        assert!(e.contains("dollars"), "{e}");
    }
}
