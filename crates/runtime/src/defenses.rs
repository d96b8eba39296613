//! Links every defense crate so that its registration is in the binary.
//! Kept by `cargo xtask new-defense`.
// defenses:begin
use safetune_defense_antidote as _;
use safetune_defense_bea as _;
use safetune_defense_booster as _;
use safetune_defense_constrained_sft as _;
use safetune_defense_ldifs as _;
use safetune_defense_lisa as _;
use safetune_defense_recovery_mix as _;
use safetune_defense_repnoise as _;
use safetune_defense_safeinstr as _;
use safetune_defense_safelora as _;
use safetune_defense_safemerge as _;
use safetune_defense_t_vaccine as _;
use safetune_defense_vaccine as _;
// defenses:end
// Judges outside the metrics crate.
use safetune_judge_embed as _;
use safetune_judge_local as _;
use safetune_judge_remote as _;
