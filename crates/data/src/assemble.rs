//! Assembling a run's pools from a data directory, the Hub or user files (the
//! built-in suite is `builtin.rs`): every evaluation prompt out of every
//! training pool, each task's held-out splits out of its train pool.

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetune_core::anyhow::{anyhow, bail};
use safetune_core::{Example, ExampleKind, Result};

use crate::catalog::{self, registry, DataSource, Dataset};
use crate::custom::CustomDataset;
use crate::overlap::remove_overlap;
use crate::pools::{MultipleChoice, PoolSelection, Pools};

/// A task's train rows that may be trained on: its train split minus every row of its other
/// splits (test and validation alike, so the pool does not depend on which split a run scores;
/// SST-2 train repeats 1,675 short phrases of them) and every evaluation prompt. Also returns
/// the held-out rows.
fn train_pool(ds: &catalog::Dataset, evals: &[Example]) -> Result<(Vec<Example>, Vec<Example>)> {
    let held_out: Vec<Example> =
        ds.splits.iter().filter(|(name, _)| name.as_str() != "train").flat_map(|(_, rows)| rows.iter().cloned()).collect();
    let mut train = ds.split("train")?.to_vec();
    remove_overlap(&mut train, &[&held_out, evals]);
    Ok((train, held_out))
}

/// Takes a task's alignment tenth out of its train pool (every tenth row, in file order) and
/// returns it as benign alignment examples; the other rows stay for fine-tuning.
fn alignment_tenth(rows: &mut Vec<Example>) -> Vec<Example> {
    let (mut rest, mut tenth) = (Vec::new(), Vec::new());
    for (i, mut e) in std::mem::take(rows).into_iter().enumerate() {
        if i % 10 == 0 {
            e.kind = ExampleKind::Benign;
            tenth.push(e);
        } else {
            rest.push(e);
        }
    }
    *rows = rest;
    tenth
}

struct Loader<'a> {
    src: &'a DataSource<'a>,
    custom: &'a BTreeMap<String, CustomDataset>,
    cache: BTreeMap<String, Dataset>,
    files: Vec<PathBuf>,
}

impl Loader<'_> {
    fn get(&mut self, name: &str) -> Result<&Dataset> {
        if !self.cache.contains_key(name) {
            let ds = match self.custom.get(name) {
                Some(c) => {
                    self.files.push(c.path.clone());
                    self.files.extend(c.test_path.clone());
                    c.load(name)?
                }
                None => {
                    let def = catalog::find(name)?;
                    self.files.extend(def.local.iter().filter(|_| !def.per_subject_dir).map(|f| PathBuf::from(f.path)));
                    catalog::load(self.src, name)?
                }
            };
            self.cache.insert(name.to_string(), ds);
        }
        Ok(&self.cache[name])
    }

    fn split(&mut self, name: &str, split: &str) -> Result<Vec<Example>> {
        Ok(self.get(name)?.split(split)?.to_vec())
    }

    /// Whether the source has every file of a catalog dataset.
    fn has(&self, name: &str) -> bool {
        let Ok(def) = catalog::find(name) else { return false };
        match self.src {
            DataSource::Dir(d) => def.local.iter().all(|f| d.root.join(f.path).exists()),
            DataSource::Hub(_) => def.hub.is_some(),
        }
    }

    /// A split of a dataset the source may lack (empty then).
    fn optional_split(&mut self, name: &str, split: &str) -> Result<Vec<Example>> {
        if self.has(name) {
            self.split(name, split)
        } else {
            Ok(Vec::new())
        }
    }
}

/// The utility benchmarks `data.utility_evals` names: MMLU (multiple choice) and MT-Bench's questions.
fn utility_benchmarks(l: &mut Loader, sel: &PoolSelection) -> Result<(Option<MultipleChoice>, Option<Vec<Example>>)> {
    let wants = |name: &str| sel.utility_evals.iter().any(|u| u == name);
    let mmlu = if wants("mmlu") { Some(MultipleChoice { dev: l.split("mmlu", "dev")?, test: l.split("mmlu", "test")? }) } else { None };
    let mt_bench = if wants("mt-bench") { Some(l.split("mt-bench", "test")?) } else { None };
    Ok((mmlu, mt_bench))
}

impl Pools {
    /// Without a data directory, the utility benchmarks come from their download source
    /// (MT-Bench's questions from FastChat's repository; MMLU has none: an error says so).
    fn builtin_utility(&mut self, sel: &PoolSelection) -> Result<()> {
        if sel.utility_evals.is_empty() {
            return Ok(());
        }
        let hub = crate::hub::HubClient::from_env();
        let src = DataSource::Hub(&hub);
        let mut l = Loader { src: &src, custom: &sel.custom, cache: BTreeMap::new(), files: Vec::new() };
        (self.mmlu, self.mt_bench) = utility_benchmarks(&mut l, sel).map_err(|e| anyhow!("data.utility_evals: {e}"))?;
        Ok(())
    }

    /// Before anything downloads: every catalog dataset the selection needs has a download
    /// source, else one error names them all (with the spec key that needs each).
    fn check_downloadable(sel: &PoolSelection) -> Result<()> {
        let custom = |n: &str| sel.custom.contains_key(n);
        let mut needed: Vec<(String, &str)> = vec![(sel.task.clone(), "data.task"), ("advbench".into(), "alignment prompts")];
        needed.extend(sel.align_task_names().into_iter().map(|t| (t.to_string(), "data.align_tasks")));
        needed.push((sel.harmful.clone(), "data.harmful"));
        needed.extend(sel.benign.split('+').map(|b| (b.to_string(), "data.benign")));
        for (names, over, key) in [(&sel.safety_evals, false, "data.safety_evals"), (&sel.over_refusal, true, "data.over_refusal")] {
            for s in names.iter().filter(|s| !custom(s)) {
                if let Some((def, _)) = registry::eval_set(s, over) {
                    needed.push((def.name.to_string(), key));
                }
            }
        }
        needed.extend(sel.utility_evals.iter().map(|u| (u.clone(), "data.utility_evals")));
        let mut missing: Vec<String> = Vec::new();
        for (name, key) in needed {
            let lacks = !custom(&name) && catalog::find(&name).is_ok_and(|d| d.hub.is_none());
            let item = format!("{name} ({key})");
            if lacks && !missing.contains(&item) {
                missing.push(item);
            }
        }
        if !missing.is_empty() {
            bail!(
                "data.source = \"hub\": no download source for {}; these need a local copy (--data-dir DIR with their files) or leaving out",
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// Assembles the pools of a selection from a data directory or the Hub (and user files).
    pub fn assemble(src: &DataSource, sel: &PoolSelection) -> Result<Self> {
        Self::check_selection(sel)?;
        let custom = &sel.custom;
        if sel.is_builtin() {
            return Self::builtin(sel);
        }
        if let DataSource::Hub(_) = src {
            Self::check_downloadable(sel)?;
        }
        let mut l = Loader { src, custom, cache: BTreeMap::new(), files: Vec::new() };
        // Each selected set, drawn by its dataset's registered rule.
        let mut safety_evals = Vec::new();
        let mut over_refusal = Vec::new();
        for (names, over, out) in [(&sel.safety_evals, false, &mut safety_evals), (&sel.over_refusal, true, &mut over_refusal)] {
            for s in names {
                let mut rows = match custom.get(s) {
                    Some(_) => l.split(s, "test")?,
                    None => {
                        let (def, set) = registry::eval_set(s, over).ok_or_else(|| anyhow!("unknown evaluation set `{s}`"))?;
                        (set.select)(l.get(def.name)?)?
                    }
                };
                if over {
                    rows.iter_mut().for_each(|e| e.kind = ExampleKind::Benign);
                }
                out.push((s.clone(), rows));
            }
        }
        // Every prompt of every evaluation set the source has, selected or not, stays out of
        // training: the training pools do not depend on which sets a run evaluates.
        let mut evals: Vec<Example> = Vec::new();
        for (def, set) in registry::eval_sets(false).into_iter().chain(registry::eval_sets(true)) {
            if l.has(def.name) {
                evals.extend((set.select)(l.get(def.name)?)?);
            }
        }
        for name in custom.iter().filter(|(_, c)| c.role.is_eval()).map(|(n, _)| n) {
            evals.extend(l.split(name, "test")?);
        }

        let mut align_prompts = l.split("advbench", "train")?;
        remove_overlap(&mut align_prompts, &[&evals]);
        let mut safe_answers = l.optional_split("safety-tuned-llamas", "train")?;
        remove_overlap(&mut safe_answers, &[&evals]);
        let mut pure_bad = l.optional_split("pure-bad", "train")?;
        remove_overlap(&mut pure_bad, &[&evals, &align_prompts, &safe_answers]);
        let mut harmful_pairs = match custom.get(&sel.harmful) {
            Some(_) => l.split(&sel.harmful, "train")?,
            None => {
                let select = catalog::find(&sel.harmful)?
                    .harmful_select()
                    .ok_or_else(|| anyhow!("data.harmful: `{}` is not a harmful set", sel.harmful))?;
                select(l.get(&sel.harmful)?)?
            }
        };
        remove_overlap(&mut harmful_pairs, &[&evals, &align_prompts, &safe_answers]);
        let (mut task_train, task_test, holdout_ids, task_held_out) = {
            let ds = l.get(&sel.task)?;
            if custom.get(&sel.task).is_none() && catalog::find(&sel.task)?.task_metric().is_none() {
                bail!("data.task: `{}` is not a task", sel.task);
            }
            if sel.task_split != "test" && !ds.splits.contains_key(&sel.task_split) {
                bail!("data.task_split: task `{}` has no `{}` split", sel.task, sel.task_split);
            }
            let (train, held_out) = train_pool(ds, &evals)?;
            (train, ds.split(&sel.task_split)?.to_vec(), ds.holdout_ids.clone(), held_out)
        };
        // Every row of the benign set in file order, minus the task's held-out rows.
        // (`alpaca+dolly`: Alpaca's rows, then Dolly's.)
        let mut benign: Vec<Example> = Vec::new();
        for name in sel.benign.split('+') {
            let mut rows: Vec<Example> = [l.split(name, "train")?, l.split(name, "test").unwrap_or_default()].concat();
            rows.sort_by_key(|e| e.id.rsplit_once(':').and_then(|(_, n)| n.parse::<usize>().ok()).unwrap_or(usize::MAX));
            benign.extend(rows);
        }
        remove_overlap(&mut benign, &[&task_held_out, &evals]);
        for e in &mut benign {
            e.kind = ExampleKind::Benign;
        }
        let mut align_task = Vec::new();
        for t in sel.align_task_names() {
            let mut tenth =
                if t == sel.task { alignment_tenth(&mut task_train) } else { alignment_tenth(&mut train_pool(l.get(t)?, &evals)?.0) };
            // Both tenths come from train pools already without evaluation prompts and their own
            // task's held-out rows; another task's rows also leave this task's held-out rows.
            remove_overlap(&mut tenth, &[&task_held_out]);
            align_task.push((t.to_string(), tenth));
        }
        let source = match src {
            DataSource::Dir(d) => d.root.display().to_string(),
            DataSource::Hub(h) => format!("hub:{}", h.endpoint),
        };
        let utility = match custom.get(&sel.task) {
            Some(c) => c.metric.clone(),
            None => catalog::find(&sel.task)?.task_metric().ok_or_else(|| anyhow!("data.task: `{}` is not a task", sel.task))?,
        };
        let (mmlu, mt_bench) = utility_benchmarks(&mut l, sel)?;
        let pools = Self {
            mmlu,
            mt_bench,
            source,
            task: sel.task.clone(),
            task_train,
            task_test,
            utility,
            holdout_ids,
            harmful_pairs,
            pure_bad,
            align_prompts,
            safe_answers,
            benign,
            align_task,
            safety_evals,
            over_refusal,
            files: l.files,
        };
        pools.check()?;
        Ok(pools)
    }

    /// The built-in suite for a selection. Its task is the only one it has: `data.align_tasks`
    /// may name it (`self`), and its alignment tenth then leaves the fine-tuning pool.
    pub fn builtin(sel: &PoolSelection) -> Result<Self> {
        let mut pools = crate::builtin::builtin_pools(&sel.task);
        pools.align_own_task(sel)?;
        pools.builtin_utility(sel)?;
        Ok(pools)
    }

    /// Without a data directory only the run's own task can join alignment (`self`): its
    /// alignment tenth moves from `task_train` to `align_task`.
    fn align_own_task(&mut self, sel: &PoolSelection) -> Result<()> {
        for t in sel.align_task_names() {
            if t != sel.task {
                bail!("data.align_tasks: task `{t}` needs a data directory (without one only `self`, the task `{}`, can join)", sel.task);
            }
            let tenth = alignment_tenth(&mut self.task_train);
            self.align_task.push((t.to_string(), tenth));
        }
        Ok(())
    }

    /// With no data directory: the built-in suite's safety side (alignment
    /// prompts, harmful pairs, evaluation prompts) around the user's own task
    /// (and harmful set, if custom).
    pub fn builtin_around_custom(sel: &PoolSelection) -> Result<Self> {
        let custom = &sel.custom;
        let Some(c) = custom.get(&sel.task) else { bail!("data.task `{}` is not a data.custom task", sel.task) };
        let mut pools = crate::builtin::builtin_pools("builtin");
        let ds = c.load(&sel.task)?;
        pools.task = sel.task.clone();
        pools.utility = c.metric.clone();
        pools.task_train = ds.split("train")?.to_vec();
        pools.task_test = ds.split("test")?.to_vec();
        pools.holdout_ids = ds.holdout_ids;
        pools.files = vec![c.path.clone()];
        if let Some(h) = custom.get(&sel.harmful) {
            pools.harmful_pairs = h.load(&sel.harmful)?.split("train")?.to_vec();
            pools.files.push(h.path.clone());
        }
        remove_overlap(&mut pools.task_train, &[&pools.task_test]);
        pools.align_own_task(sel)?;
        pools.builtin_utility(sel)?;
        pools.check()?;
        Ok(pools)
    }
}
