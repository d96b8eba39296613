//! Agreement between a judge's binary decisions and reference labels:
//! accuracy and Cohen's kappa.

/// Counts of a 2 × 2 table: (judge says yes/no) × (reference says yes/no).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Agreement {
    pub both_yes: usize,
    pub judge_yes_ref_no: usize,
    pub judge_no_ref_yes: usize,
    pub both_no: usize,
}

impl Agreement {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let mut a = Self::default();
        for (judge, reference) in pairs {
            a.add(judge, reference);
        }
        a
    }

    pub fn add(&mut self, judge: bool, reference: bool) {
        match (judge, reference) {
            (true, true) => self.both_yes += 1,
            (true, false) => self.judge_yes_ref_no += 1,
            (false, true) => self.judge_no_ref_yes += 1,
            (false, false) => self.both_no += 1,
        }
    }

    pub fn n(&self) -> usize {
        self.both_yes + self.judge_yes_ref_no + self.judge_no_ref_yes + self.both_no
    }

    pub fn accuracy(&self) -> f64 {
        if self.n() == 0 {
            return f64::NAN;
        }
        (self.both_yes + self.both_no) as f64 / self.n() as f64
    }

    /// Cohen's kappa: (p_o − p_e) / (1 − p_e); 1 when both always agree on one class.
    pub fn kappa(&self) -> f64 {
        let n = self.n() as f64;
        if n == 0.0 {
            return f64::NAN;
        }
        let po = self.accuracy();
        let judge_yes = (self.both_yes + self.judge_yes_ref_no) as f64 / n;
        let ref_yes = (self.both_yes + self.judge_no_ref_yes) as f64 / n;
        let pe = judge_yes * ref_yes + (1.0 - judge_yes) * (1.0 - ref_yes);
        if (1.0 - pe).abs() < 1e-12 {
            return 1.0;
        }
        (po - pe) / (1.0 - pe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textbook_kappa() {
        // Wikipedia's example: 50 items, 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no → p_o 0.7, p_e 0.5, κ 0.4.
        let a = Agreement { both_yes: 20, judge_yes_ref_no: 5, judge_no_ref_yes: 10, both_no: 15 };
        assert!((a.accuracy() - 0.7).abs() < 1e-12);
        assert!((a.kappa() - 0.4).abs() < 1e-12);
        // Perfect agreement and chance-level agreement.
        let perfect = Agreement::from_pairs([(true, true), (false, false), (true, true)]);
        assert_eq!(perfect.kappa(), 1.0);
        let chance = Agreement { both_yes: 25, judge_yes_ref_no: 25, judge_no_ref_yes: 25, both_no: 25 };
        assert!(chance.kappa().abs() < 1e-12);
    }
}
