//! Everything one run draws from, assembled from a data directory or the
//! built-in suite, with alignment, attack and evaluation pools disjoint.

use safetune_core::anyhow::bail;
use safetune_core::{Example, Result};

use crate::overlap::{check_disjoint, remove_overlap};
use crate::DataDir;

pub struct Pools {
    /// `builtin` or the data directory.
    pub source: String,
    pub task: String,
    pub task_train: Vec<Example>,
    pub task_test: Vec<Example>,
    /// Harmful request → compliant answer pairs for harmful variants.
    pub harmful_pairs: Vec<Example>,
    /// Harmful prompts to pair with refusals for alignment.
    pub align_prompts: Vec<Example>,
    /// Benign instructions mixed into alignment.
    pub benign: Vec<Example>,
    /// Harmful prompts for attack-success evaluation, by set name.
    pub safety_evals: Vec<(String, Vec<Example>)>,
}

impl Pools {
    /// Real data for `task` from a directory in the layout of `shared/data`.
    /// AdvBench's train and test files share prompts, so the alignment pool
    /// is AdvBench train minus every prompt of the evaluation sets.
    pub fn from_dir(dir: &DataDir, task: &str) -> Result<Self> {
        let (mut task_train, task_test) = match task {
            "sst2" => (dir.sst2("train")?, dir.sst2("test")?),
            other => {
                bail!("task `{other}` is not available from a data directory yet (available: sst2)")
            }
        };
        let safety_evals = vec![
            ("advbench-test".to_string(), dir.advbench("test")?),
            ("policy".to_string(), dir.policy()?),
        ];
        let mut align_prompts = dir.advbench("train")?;
        let dev = dir.advbench("dev")?;
        let evals: Vec<&[Example]> = safety_evals
            .iter()
            .map(|(_, v)| v.as_slice())
            .chain([dev.as_slice()])
            .collect();
        remove_overlap(&mut align_prompts, &evals);
        // SST-2's train split holds some test sentences verbatim: they leave the train pool.
        remove_overlap(&mut task_train, &[&task_test]);
        let mut harmful_pairs = dir.beavertails_unsafe()?;
        remove_overlap(&mut harmful_pairs, &evals);
        let pools = Self {
            source: dir.root.display().to_string(),
            task: task.into(),
            task_train,
            task_test,
            harmful_pairs,
            align_prompts,
            benign: dir.alpaca()?,
            safety_evals,
        };
        pools.check()?;
        Ok(pools)
    }

    /// Errors if any evaluation prompt appears in alignment or fine-tuning pools.
    pub fn check(&self) -> Result<()> {
        let training = [
            ("alignment prompts", self.align_prompts.as_slice()),
            ("benign instructions", self.benign.as_slice()),
            ("harmful pairs", self.harmful_pairs.as_slice()),
            ("task train", self.task_train.as_slice()),
        ];
        let mut evals: Vec<(&str, &[Example])> = self
            .safety_evals
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        evals.push(("task test", self.task_test.as_slice()));
        check_disjoint(&training, &evals)
    }
}
