//! The simulated provider's settings, as they appear in a flockd config:
//! `[provider.NAME]` with `kind = "simulated"`, and `[resource.NAME.simulated]`.

use serde::Deserialize;

/// `[provider.NAME]` with `kind = "simulated"` (every key but `kind`).
///
/// ```toml
/// [provider.sim]
/// kind = "simulated"
/// seed = 7        # default 0
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SimProviderSettings {
    /// Seeds every random draw of this provider's resources (boot jitter,
    /// spot interruptions): the same seed and inputs give the same run.
    #[serde(default)]
    pub seed: u64,
}

/// `[resource.NAME.simulated]`: how machines of one resource behave. Every
/// key is optional; an absent table means "boots in 90 s, never fails".
///
/// ```toml
/// [resource.gpu-spot.simulated]
/// boot-secs = 120                 # default 90
/// boot-jitter-secs = 60           # default 0: each boot takes boot-secs + U(0, jitter)
/// capacity-outages = [{ from-secs = 3600, to-secs = 7200 }]   # launches fail (capacity)
/// spot-interruptions-per-hour = 0.05   # per instance, Poisson; default 0
/// spot-interruptions-at-secs = [5400]  # every instance alive then is reclaimed
/// never-boots = false             # a broken image: the agent never registers
/// ```
///
/// Times (`*-secs` of outages and interruption waves) count from the start
/// of the simulation.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SimResourceSettings {
    /// Seconds from launch until the agent registers its worker.
    #[serde(default = "default_boot_secs")]
    pub boot_secs: f64,
    /// Each boot takes an extra uniform draw from [0, boot-jitter-secs].
    #[serde(default)]
    pub boot_jitter_secs: f64,
    /// Windows during which every launch fails.
    #[serde(default)]
    pub capacity_outages: Vec<Outage>,
    /// Mean reclaims per instance-hour (exponential lifetimes); 0 = never.
    #[serde(default)]
    pub spot_interruptions_per_hour: f64,
    /// Moments at which the cloud reclaims every instance of this resource.
    #[serde(default)]
    pub spot_interruptions_at_secs: Vec<f64>,
    /// The machine starts (and bills) but its agent never registers.
    #[serde(default)]
    pub never_boots: bool,
}

fn default_boot_secs() -> f64 {
    90.0
}

impl Default for SimResourceSettings {
    fn default() -> Self {
        SimResourceSettings {
            boot_secs: default_boot_secs(),
            boot_jitter_secs: 0.0,
            capacity_outages: Vec::new(),
            spot_interruptions_per_hour: 0.0,
            spot_interruptions_at_secs: Vec::new(),
            never_boots: false,
        }
    }
}

/// A window `[from-secs, to-secs)` in which launches of the resource fail.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Outage {
    pub from_secs: f64,
    pub to_secs: f64,
    /// The error launches get: `capacity` (default) or `quota`.
    #[serde(default)]
    pub error: OutageError,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutageError {
    #[default]
    Capacity,
    Quota,
}

impl SimResourceSettings {
    /// Checks what serde cannot; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{name} = {v}: must be a number of seconds ≥ 0"))
            }
        };
        secs("boot-secs", self.boot_secs)?;
        secs("boot-jitter-secs", self.boot_jitter_secs)?;
        for (i, o) in self.capacity_outages.iter().enumerate() {
            secs(&format!("capacity-outages[{i}].from-secs"), o.from_secs)?;
            secs(&format!("capacity-outages[{i}].to-secs"), o.to_secs)?;
            if o.to_secs <= o.from_secs {
                return Err(format!(
                    "capacity-outages[{i}]: to-secs {} must be after from-secs {}",
                    o.to_secs, o.from_secs
                ));
            }
        }
        if !(self.spot_interruptions_per_hour.is_finite() && self.spot_interruptions_per_hour >= 0.0) {
            return Err(format!(
                "spot-interruptions-per-hour = {}: must be a rate ≥ 0",
                self.spot_interruptions_per_hour
            ));
        }
        for (i, t) in self.spot_interruptions_at_secs.iter().enumerate() {
            secs(&format!("spot-interruptions-at-secs[{i}]"), *t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let s: SimResourceSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, SimResourceSettings::default());
        let err = serde_json::from_str::<SimResourceSettings>(r#"{"boot-sec": 3}"#).unwrap_err();
        assert!(err.to_string().contains("boot-sec"), "{err}");
        let bad = SimResourceSettings {
            capacity_outages: vec![Outage { from_secs: 10.0, to_secs: 5.0, error: OutageError::Capacity }],
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("capacity-outages[0]"));
    }
}
