//! align → fine-tune → evaluate, for every method × regime of a spec: checks
//! every input first, then walks the stages (`align.rs`, `cell.rs`).

use std::collections::BTreeMap;
use std::time::Instant;

use safetune_core::anyhow::anyhow;
use safetune_core::defense::DefenseData;
use safetune_core::{Example, Result};
use safetune_data::{alignment_set, AlignmentPools, AlignmentSpec, Pools, Regime};

use crate::hashing::write_json;
use crate::options::RunOptions;
use crate::output::say;
use crate::plan::RunPlan;
use crate::prepare::{manifest_base, open_model, open_run_dir, prepare, Prepared};
use crate::results::CellResult;
use crate::run::{aligned_model, defender_harmful, mark_done, refusal_pairs, reuse_here, spare_demonstrations, Aligned, Run};
use crate::spec::RunSpec;
use crate::stage_cache::StageCache;

/// Runs a spec end to end; returns the summary table. A spec over several
/// tasks or seeds runs one sub-run each under `<out>/<name>/runs/` and
/// aggregates them across seeds.
pub fn run(spec: &RunSpec, opts: &RunOptions) -> Result<String> {
    let subs = spec.expand();
    if subs.is_empty() {
        return run_single(spec, opts);
    }
    // Every sub-run's input is checked before anything is written or trained, so that a
    // bad data file or an impossible budget in the last sub-run stops the grid at once.
    // The pools depend on the task, not the seed: prepared once per task.
    let mut plan = Vec::new();
    let mut prepared: Vec<(String, Prepared)> = Vec::new();
    for s in &subs {
        let at = |e: safetune_core::anyhow::Error| anyhow!("{e} (task {}, seed {})", s.data.task, s.seed);
        let i = match prepared.iter().position(|(t, _)| *t == s.data.task) {
            Some(i) => i,
            None => {
                prepared.push((s.data.task.clone(), prepare(s, opts).map_err(at)?));
                prepared.len() - 1
            }
        };
        let drawn = drawn_sets(s, &prepared[i].1.pools).map_err(at)?;
        plan.push(plan_line(s, opts, &drawn, opts.dry_run.then_some(&prepared[i].1)).map_err(at)?);
    }
    if opts.dry_run {
        return Ok(format!(
            "{}: {} sub-runs under {}\n{}",
            spec.name,
            subs.len(),
            opts.out.join(&spec.name).join("runs").display(),
            plan.join("")
        ));
    }
    let (top, _lock, _) = open_run_dir(spec, &opts.out, !opts.is_worker())?;
    let runs = top.join("runs");
    let mut sub_opts = RunOptions { out: runs.clone(), worker_cells: None, worker_alignments: None, ..opts.clone() };
    let mut finished = vec![false; subs.len()];
    let pass = |i: usize, o: &RunOptions| -> Result<String> {
        let s = &subs[i];
        say(opts.quiet, format!("[grid] {} of {}: task {}, seed {}", i + 1, subs.len(), s.data.task, s.seed));
        run_single(s, o)
    };
    if opts.jobs > 1 && subs.len() > 1 {
        say(opts.quiet, format!("[grid] {} sub-runs: aligned models and cells in up to {} workers across them", subs.len(), opts.jobs));
        let start = Instant::now();
        // A sub-run whose workers have all ended gets its own pass at once (seconds: it
        // restores what they computed), so its manifest and report are written while the
        // other sub-runs train, and stay written if the grid is stopped or fails later. Its
        // `grid_workers_s` is the pool's wall time until then. A pass that fails here is
        // tried again below, where its error stops the grid.
        let workers = stages_in_workers(&subs, &sub_opts, |spec_json| {
            let Some(i) = subs.iter().position(|s| runs.join(&s.name).join("spec.json") == spec_json) else { return };
            let o = RunOptions { grid_workers_s: Some(start.elapsed().as_secs_f64()), ..sub_opts.clone() };
            match pass(i, &o) {
                Ok(_) => finished[i] = true,
                Err(e) => safetune_core::tracing::warn!("[grid] {}: {e:#} (tried again when every worker has ended)", subs[i].name),
            }
        })?;
        sub_opts.grid_workers_s = Some(workers);
    }
    let mut dirs = Vec::new();
    for (i, s) in subs.iter().enumerate() {
        if !finished[i] {
            pass(i, &sub_opts)?;
        }
        dirs.push((s.data.task.clone(), s.seed, runs.join(&s.name)));
    }
    crate::report::write_seed_report(&top, &spec.name, &dirs)
}

/// One run's plan in a line: what it trains and scores; with `tokens`, a second line counts
/// what its training stages train on (`--dry-run`).
fn plan_line(spec: &RunSpec, opts: &RunOptions, drawn: &Drawn, tokens: Option<&Prepared>) -> Result<String> {
    let all = RunPlan::of(spec)?;
    let total = all.cells.len();
    let only = all.only(opts.only_cells.as_deref())?;
    let cells =
        if only.cells.len() == total { format!("{total} cells") } else { format!("{} of its {total} cells (--cells)", only.cells.len()) };
    let mut line = format!(
        "  {}: task {}, seed {}; alignment on {} examples; {cells} ({} × {} stacks × {}) on n = {}; safety sets {}\n",
        spec.name,
        spec.data.task,
        spec.seed,
        drawn.align_set.len(),
        spec.finetune.methods.join(", "),
        spec.finetune.defenses.len(),
        spec.finetune.regimes.join(", "),
        spec.finetune.n,
        spec.data.safety_evals.join(", "),
    );
    if let Some(p) = tokens {
        line.push_str(&tokens_line(spec, drawn, p)?);
    }
    Ok(line)
}

/// What one epoch of each training stage trains on, counted with the model's tokenizer and the
/// trainer's batching: the alignment set and every regime's variant (before any defense's data
/// mix; per method where methods train with different settings), its tokens and the share of
/// padding in its batches.
fn tokens_line(spec: &RunSpec, drawn: &Drawn, p: &Prepared) -> Result<String> {
    let count = |examples: &[Example], cfg: &safetune_core::config::TrainConfig| -> Result<String> {
        let c = safetune_train::epoch_tokens(&p.tokenizer, p.format, examples, cfg, safetune_core::training::stream::TASK)?;
        let cut = if c.left_out > 0 { format!(", {} left out", c.left_out) } else { String::new() };
        Ok(format!("{} tokens, {:.1}% padding in {} batches of {}{cut}", c.tokens, 100.0 * c.padding_share(), c.batches, cfg.batch_size))
    };
    let mut parts = vec![format!("alignment {}", count(&drawn.align_set, &spec.alignment_stage_train())?)];
    for (regime, variant) in &drawn.variants {
        let mut seen: Vec<(safetune_core::config::TrainConfig, Vec<&str>)> = Vec::new();
        for m in &spec.finetune.methods {
            let cfg = spec.cell_stage_train(m, regime)?;
            match seen.iter_mut().find(|(c, _)| (c.max_len, c.batch_size) == (cfg.max_len, cfg.batch_size)) {
                Some((_, ms)) => ms.push(m),
                None => seen.push((cfg, vec![m])),
            }
        }
        for (cfg, methods) in &seen {
            let who = if seen.len() > 1 { format!("{regime} ({})", methods.join(", ")) } else { regime.clone() };
            parts.push(format!("{who} {}", count(&variant.examples, cfg)?));
        }
    }
    Ok(format!("    per epoch: {}\n", parts.join("; ")))
}

/// What a run trains on, drawn from its pools: the alignment set and every regime's variant.
struct Drawn {
    align_set: Vec<Example>,
    variants: Vec<(String, safetune_data::Variant)>,
}

/// The alignment set and every regime's variant of a run, after checking that every stack's
/// data mixes can be applied to every variant (with `prepare`, everything that can reject a
/// run's input, before its results directory exists).
fn drawn_sets(spec: &RunSpec, pools: &Pools) -> Result<Drawn> {
    let align_set = alignment_set(
        &AlignmentPools {
            harmful_prompts: &pools.align_prompts,
            safe_answers: &pools.safe_answers,
            benign: &pools.benign,
            task_rows: &pools.align_task,
        },
        &AlignmentSpec {
            refusals: spec.alignment.refusals,
            safe_answers: spec.alignment.safe_answers,
            recovery: spec.alignment.recovery,
            benign: spec.alignment.benign,
            benign_lookalikes: spec.alignment.benign_lookalikes,
            task_examples: spec.alignment.task_examples,
            seed: spec.seed,
        },
    )?;
    let mut variants = Vec::new();
    for regime in &spec.finetune.regimes {
        let v = pools
            .variant(Regime::parse(regime)?, spec.finetune.n, spec.seed)
            .map_err(|e| anyhow!("finetune.n / regime `{regime}`: {e}"))?;
        variants.push((regime.clone(), v));
    }
    // Every stack's data mixes on every regime's variant, with the data its cells will hand them:
    // a pool too small for a mix is named now, not after the alignment has trained.
    let mut mixing = Vec::new();
    for names in &spec.finetune.defenses {
        let stack = crate::stack::build_stack(&spec.defense_options, names)?;
        if !stack.mixes.is_empty() {
            mixing.push((names, stack));
        }
    }
    if !mixing.is_empty() {
        let (safety, harmful, demonstrations) =
            (refusal_pairs(&align_set), defender_harmful(spec, pools)?, spare_demonstrations(pools, &align_set));
        let data =
            DefenseData { safety: &safety, harmful: &harmful, refusals: safetune_data::REFUSAL_STYLES, demonstrations: &demonstrations };
        for (names, stack) in &mixing {
            for (regime, v) in &variants {
                let mut task = v.examples.clone();
                crate::stack::apply_mixes(&stack.mixes, &mut task, &data, spec.seed)
                    .map_err(|e| anyhow!("finetune.defenses {names:?}, regime `{regime}`: {e}"))?;
            }
        }
    }
    Ok(Drawn { align_set, variants })
}

/// A run's results directory opened for computing: its inputs prepared, the directory locked
/// (unless this process is a worker), the plan of what it computes — every cell, or those of
/// `--cells` and their aligned models — and its manifest so far.
struct Opened<'a> {
    r: Run<'a>,
    plan: RunPlan,
    manifest: serde_json::Value,
    _lock: Option<crate::lock::RunLock>,
}

fn open<'a>(spec: &'a RunSpec, opts: &RunOptions, prepared: Prepared, align_set: Vec<Example>) -> Result<Opened<'a>> {
    let plan = RunPlan::of(spec)?.only(opts.only_cells.as_deref())?;
    let (run_dir, lock, spec_hash) = open_run_dir(spec, &opts.out, !opts.is_worker())?;
    let mut manifest = manifest_base(spec, opts, &spec_hash, &prepared);
    manifest["alignment"] =
        serde_json::json!({ "examples": align_set.len(), "ids": align_set.iter().map(|e| e.id.clone()).collect::<Vec<_>>() });
    if opts.only_cells.is_some() {
        // A piece of the run: what it computed, for `report --from` and for the reader.
        manifest["cells_selected"] = serde_json::json!(plan.cells.iter().map(|c| &c.label).collect::<Vec<_>>());
    }
    Ok(Opened { r: Run::new(spec, opts, prepared, run_dir, align_set), plan, manifest, _lock: lock })
}

/// Where a cell or a model's evaluation stands in a run.
#[derive(PartialEq, Eq)]
enum StageState {
    /// Its result is in the run's directory under its current key.
    Here,
    /// Its result is in the stage cache (a run restores it from there).
    Cached,
    /// It is still to compute.
    ToDo,
}

/// A cell's content key and where it stands.
fn cell_state(r: &Run, c: &crate::plan::CellPlan, a: &Aligned) -> Result<(String, StageState)> {
    let key = r.cell_key(&c.method, &c.defenses, &c.regime, a)?;
    let file = r.run_dir.join("cells").join(format!("{}.json", c.label));
    let here = reuse_here::<CellResult>(&r.run_dir, "cells", &c.label, &file, &key)?.is_some();
    let state = stage_state(here, "cells", &key);
    Ok((key, state))
}

/// Where the evaluation of the aligned model `a` under `label` stands.
fn aligned_evaluation_state(r: &Run, label: &str, a: &Aligned) -> Result<StageState> {
    let key = r.evaluation_key(&aligned_identity(r, a))?;
    let file = r.run_dir.join("models").join(format!("{label}.json"));
    let here = reuse_here::<crate::results::ModelEval>(&r.run_dir, "models", label, &file, &key)?.is_some();
    Ok(stage_state(here, "evals", &key))
}

fn stage_state(here: bool, cache: &str, key: &str) -> StageState {
    if here {
        StageState::Here
    } else if StageCache::new(cache).contains(key) {
        StageState::Cached
    } else {
        StageState::ToDo
    }
}

/// What an aligned model's evaluation is made of: the base model and the aligned model's key.
fn aligned_identity(r: &Run, a: &Aligned) -> serde_json::Value {
    serde_json::json!({ "base": r.model_sha, "aligned": a.key })
}

/// The base model's evaluation, once per results directory (and per content key in the cache).
fn evaluate_base(r: &mut Run) -> Result<()> {
    let (path, template) = (r.model_path.clone(), r.spec.data.template);
    let base_id = serde_json::json!({ "base": r.model_sha });
    r.evaluate_once("base", base_id, || open_model(&path, template)).map(drop)
}

/// The aligned model `a`'s evaluation under `label`, once per results directory (and per
/// content key in the cache).
fn evaluate_aligned(r: &mut Run, label: &str, a: &Aligned) -> Result<()> {
    let (path, template, a2) = (r.model_path.clone(), r.spec.data.template, a.clone());
    r.evaluate_once(label, aligned_identity(r, a), || aligned_model(&path, &a2, template)).map(drop)
}

/// What a `--jobs` pool computes across the runs given to it (`jobs::run_graph`): one item
/// per worker process, and which item trains (or last evaluates) each aligned model's content
/// key and trains each cell training's key, so that what two runs share — the alignment of a
/// seed's tasks, the pure-bad cell's training — is computed once, the other run's item
/// starting after it and reusing it from the cache (trained weights, stored answers).
#[derive(Default)]
struct Pool {
    items: Vec<crate::jobs::Item>,
    /// Aligned model's content key → the item that last trains or evaluates it.
    evaluating: std::collections::HashMap<String, usize>,
    /// Cell training key → the item that trains it.
    training: std::collections::HashMap<String, usize>,
}

impl Pool {
    fn push(&mut self, r: &Run, work: crate::jobs::Work, labels: Vec<String>, mut after: Vec<usize>) -> usize {
        after.sort_unstable();
        after.dedup();
        self.items.push(crate::jobs::Item { spec: r.run_dir.join("spec.json"), work, labels, after });
        self.items.len() - 1
    }

    /// Adds the run `r`'s aligned models, their evaluations and its cell groups that are
    /// neither in its directory nor in the cache (a run's own pass restores those), each
    /// after the items it needs: an aligned model's training trains once per content key,
    /// the labels sharing that key in one item (a stack naming `alignment.objective`'s
    /// defense trains the plain alignment's model), and evaluates them; another run's label
    /// of that key is an evaluation after it; a cell group starts once its aligned models are
    /// trained and evaluated in its run's directory (a worker must neither train nor evaluate
    /// what another worker is computing). An aligned model's evaluation in the cache is
    /// restored here, at once, rather than by each of its cells' workers side by side.
    fn add(&mut self, r: &mut Run, plan: &RunPlan) -> Result<()> {
        use crate::jobs::Work;
        let mine = r.run_dir.join("spec.json");
        // Per aligned model of the plan: its entry, and the item after which it is trained and
        // evaluated here (none: it is).
        let mut aligned = BTreeMap::new();
        for d in &plan.alignments {
            let label = crate::results::aligned_label(d.as_deref());
            let (a, cached) = r.alignment_entry(d.as_deref())?;
            let mut state = aligned_evaluation_state(r, &label, &a)?;
            if cached && state == StageState::Cached {
                evaluate_aligned(r, &label, &a)?;
                state = StageState::Here;
            }
            let before = self.evaluating.get(&a.key).copied();
            let item = match before {
                // This run's training of the same key: one more label for it to evaluate.
                Some(i) if !cached && self.items[i].work == Work::Align && self.items[i].spec == mine => {
                    self.items[i].labels.push(label.clone());
                    Some(i)
                }
                None if !cached => Some(self.push(r, Work::Align, vec![label.clone()], vec![])),
                // Evaluated here already: wait for the training only, if another run's item does it.
                _ if state != StageState::ToDo => before.filter(|_| !cached),
                // Trained by another run's item, or evaluated there first (its answers then stored).
                _ => Some(self.push(r, Work::Evaluate, vec![label.clone()], before.into_iter().collect())),
            };
            if let Some(i) = item {
                self.evaluating.insert(a.key.clone(), i);
            }
            aligned.insert(d.clone(), (a, item));
        }
        let mut pending = std::collections::HashMap::new();
        for c in &plan.cells {
            let (a, wait) = &aligned[&c.align];
            if cell_state(r, c, a)?.1 == StageState::ToDo {
                pending.insert(c.label.clone(), (r.train_key(&c.method, &c.defenses, &c.regime, a)?, *wait));
            }
        }
        for g in plan.training_groups() {
            let g: Vec<String> = g.into_iter().filter(|l| pending.contains_key(l)).collect();
            let Some(first) = g.first() else { continue };
            let key = pending[first].0.clone();
            let mut after: Vec<usize> = g.iter().filter_map(|l| pending[l].1).collect();
            // A training another run's item does: this group restores its weights after it.
            after.extend(self.training.get(&key).copied());
            let i = self.push(r, Work::Cells, g, after);
            self.training.entry(key).or_insert(i);
        }
        Ok(())
    }
}

/// `--jobs N`: the aligned models, their evaluations and the cells of `subs` (a run, or a
/// grid's sub-runs) computed in one pool of worker processes (`jobs::run_graph`: at most N at
/// a time, each item as soon as what it needs has ended), before the runs' own passes restore
/// them from the cache; so one sub-run's lone alignment trains beside another's, and a run's
/// cells start beside a longer alignment they do not need. Each run's base model is
/// evaluated first, here, so that two workers in one directory never both evaluate it.
/// `run_done` hears of each run whose workers have all ended (its `spec.json`), as the
/// others go on. Returns the wall time it took.
fn stages_in_workers(subs: &[RunSpec], opts: &RunOptions, run_done: impl FnMut(&std::path::Path)) -> Result<f64> {
    let start = Instant::now();
    let mut pool = Pool::default();
    for s in subs {
        let prepared = prepare(s, opts)?;
        let drawn = drawn_sets(s, &prepared.pools)?;
        let Opened { mut r, plan, .. } = open(s, opts, prepared, drawn.align_set)?;
        evaluate_base(&mut r)?;
        pool.add(&mut r, &plan)?;
    }
    crate::jobs::run_graph(&pool.items, opts, run_done)?;
    Ok(start.elapsed().as_secs_f64())
}

fn run_single(spec: &RunSpec, opts: &RunOptions) -> Result<String> {
    let start = Instant::now();
    let quiet = opts.quiet;
    let prepared = prepare(spec, opts)?;
    let drawn = drawn_sets(spec, &prepared.pools)?;
    if opts.dry_run {
        return Ok(format!(
            "{}: one run in {}\n{}",
            spec.name,
            opts.out.join(&spec.name).display(),
            plan_line(spec, opts, &drawn, Some(&prepared))?
        ));
    }
    let Opened { mut r, plan, mut manifest, _lock } = open(spec, opts, prepared, drawn.align_set)?;
    if let Some(s) = opts.grid_workers_s {
        manifest["grid_workers_s"] = s.into();
    }
    evaluate_base(&mut r)?;
    let align_label = |d: &Option<String>| crate::results::aligned_label(d.as_deref());
    // With --jobs (unless a grid did it across its sub-runs), what is left to train and
    // evaluate is computed in worker processes; the passes below then find it in the cache.
    if opts.jobs > 1 && !opts.is_worker() && opts.grid_workers_s.is_none() {
        let mut pool = Pool::default();
        pool.add(&mut r, &plan)?;
        crate::jobs::run_graph(&pool.items, opts, |_| {})?;
    }
    // A cells worker touches only the aligned models its cells start from: another worker
    // may be training or evaluating the others. (`--worker-cells ''`, a Slurm preparation
    // job, computes every stage before the cells.)
    let needed = |d: &Option<String>| match &opts.worker_cells {
        Some(w) if !w.is_empty() => plan.cells.iter().any(|c| c.align == *d && w.contains(&c.label)),
        _ => true,
    };
    let mut aligned: BTreeMap<Option<String>, Aligned> = BTreeMap::new();
    let mut keys = serde_json::Map::new();
    let mut published = Vec::new();
    for d in &plan.alignments {
        let label = align_label(d);
        if opts.worker_alignments.as_ref().is_some_and(|w| !w.contains(&label)) || !needed(d) {
            continue;
        }
        let a = r.aligned(d.as_deref())?;
        if !opts.is_worker() && !a.full {
            crate::align::publish_aligned_adapter(&r.run_dir, &label, &a)?;
            published.push(label.clone());
        }
        evaluate_aligned(&mut r, &label, &a)?;
        write_alignment_time(&r.run_dir, &label, &a, r.timings.get(&format!("eval_{label}")))?;
        keys.insert(label, a.key.clone().into());
        aligned.insert(d.clone(), a);
    }
    if opts.worker_alignments.is_some() {
        return Ok(String::new());
    }
    manifest["alignment"]["keys"] = serde_json::Value::Object(keys);
    crate::align::write_adapters_readme(&r.run_dir, &spec.model.source, &published)?;

    // Cells not finished in this directory nor in the cache, in grid order.
    let mut pending = Vec::new();
    for c in &plan.cells {
        let cell = &c.label;
        if opts.worker_cells.as_ref().is_some_and(|w| !w.contains(cell)) {
            continue;
        }
        let a = &aligned[&c.align];
        let (key, state) = cell_state(&r, c, a)?;
        if state == StageState::Here {
            say(quiet, format!("[{cell}] already done"));
            continue;
        }
        let rels = r.cell_files(&c.method, &c.defenses, cell)?;
        if state == StageState::Cached && StageCache::new("cells").restore(&key, &r.run_dir, &rels)? {
            say(quiet, format!("[{cell}] reusing cached cell {}", &key[..16]));
            r.publish_trained_from_cell(&c.method, &c.defenses, &c.regime, a, cell)?;
            mark_done(&r.run_dir, "cells", cell, &key)?;
            continue;
        }
        pending.push((c, key, rels));
    }
    for (c, key, rels) in pending {
        let res = r.cell(&c.method, &c.defenses, &c.regime, &aligned[&c.align])?;
        // The key first: a cell is done once its file exists under the key.
        mark_done(&r.run_dir, "cells", &c.label, &key)?;
        write_json(&r.run_dir.join("cells").join(format!("{}.json", c.label)), &res)?;
        StageCache::new("cells").publish(&key, &r.run_dir, &rels)?;
    }
    if opts.worker_cells.is_some() {
        return Ok(String::new());
    }
    r.timings.insert("run_s".into(), start.elapsed().as_secs_f64().into());
    manifest["timings"] = serde_json::Value::Object(std::mem::take(&mut r.timings));
    write_json(&r.run_dir.join("manifest.json"), &manifest)?;
    crate::report::write_report(&r.run_dir, &spec.name)
}

/// Records in `timings/<label>.json` how long the aligned model took to train
/// (its cached `train_report.json`, so a reused alignment reports the time it
/// cost when it was computed): the report charges it to the cells built on it.
/// With `eval`, the time this process took to evaluate it; without, the file's
/// earlier evaluation time is kept — so the evaluation a `--jobs` worker computed
/// stays on record (`timings/`; the manifest lists what its own process computed).
fn write_alignment_time(run_dir: &std::path::Path, label: &str, a: &Aligned, eval: Option<&serde_json::Value>) -> Result<()> {
    let path = a.dir.join("train_report.json");
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    let report: safetune_train::TrainReport = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let file = run_dir.join("timings").join(format!("{label}.json"));
    let earlier = || -> Option<serde_json::Value> {
        let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).ok()?).ok()?;
        t.get("eval").cloned()
    };
    let mut t = serde_json::json!({ "train": { "seconds": report.seconds }, "steps": report.steps, "tokens": report.tokens });
    if let Some(e) = eval.cloned().or_else(earlier) {
        t["eval"] = e;
    }
    write_json(&file, &t)
}
