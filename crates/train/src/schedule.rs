//! Learning-rate schedules with linear warmup.

use safetune_core::config::{Schedule, TrainConfig};

/// The learning rate for optimiser step `step` (0-based) of `total`.
pub fn learning_rate(cfg: &TrainConfig, step: usize, total: usize) -> f64 {
    let warmup = (cfg.warmup_ratio * total as f64).ceil() as usize;
    if step < warmup {
        return cfg.learning_rate * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match cfg.schedule {
        Schedule::Constant => cfg.learning_rate,
        Schedule::Linear => cfg.learning_rate * (1.0 - progress),
        Schedule::Cosine => cfg.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let cfg = TrainConfig { learning_rate: 1.0, warmup_ratio: 0.1, schedule: Schedule::Cosine, ..Default::default() };
        assert!((learning_rate(&cfg, 0, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&cfg, 9, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&cfg, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&cfg, 55, 100) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&cfg, 99, 100) < 0.01);
        let lin = TrainConfig { schedule: Schedule::Linear, ..cfg.clone() };
        assert!((learning_rate(&lin, 55, 100) - 0.5).abs() < 1e-12);
        let c = TrainConfig { schedule: Schedule::Constant, warmup_ratio: 0.0, ..cfg };
        assert_eq!(learning_rate(&c, 77, 100), 1.0);
    }
}
