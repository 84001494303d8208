"""Weight-only int4 and int8 (`sage_jax.quant`) against float32 in one run (issue 15, part 3): what the weights
take in memory, and what greedy decoding and one exact analysis cost when every step dequantises them.

- Weight memory of the preset (`Context.params`): the bytes its live device buffers hold (`jax.device_put`, then
  each array's `on_device_size_in_bytes()`: on CPU its `nbytes`, on an accelerator with any layout padding) in
  float32, cast to bfloat16, and quantized symmetrically to int8 and int4, each weight in the largest groups up to
  GGUF's 32 that divide its input axis (`quant.largest_group_sizes`: on `tiny` 32 everywhere but the FFN's down
  projection, whose 688 = 43 x 16 inputs take 16; groups of 32 cost 0.5 + 2/32 bytes an int4 weight, 85.9% below
  float32, groups of 16 0.625, 84.4%).
- The same for SmolLM2-135M-Instruct (`SMOLLM2`): its float32 reading (`load_gguf`), its GGUF blocks as they are
  (`quantized=True`: Q4_1 layers, a Q8_0 embedding) and our symmetric int4 of the float reading in groups of 32.
- Decoding: greedy, one contender per model form, all compiled ahead of time and timed alternately in one
  `side_by_side`; every contender ends on a token none of them emits (`shared_eos`), so each generates exactly
  the tokens asked for. The preset: the `decode` case's batch-1 prompt and `new_tokens`, float32 against int4
  (the end token is the `decode` case's `Context.eos_id` unless the int4 model emits it). SmolLM2: the
  `pretrained` case's chat prompt and `new_tokens` at batch 1, its three forms side by side.
- Exact analysis: Eq. 7 (attention weighting, probe at layer 0) for every step of one chain, the same way. The
  preset: the `significance` case's first chain (`workloads.chain`), float32 against int4. SmolLM2: the
  `pretrained` case's chain (a worked sum in its chat template), its three forms. The settings give each
  quantized map's largest absolute difference from the float32 map: the GGUF blocks hold the float32 reading's
  values exactly (0 here on CPU), int4 moves them.
- Without the package that ships SmolLM2 its figures are recorded as skipped and the case still succeeds. In
  quick mode its decoding and analysis are skipped (`QUICK_SKIP`: compiling them for three contenders takes
  minutes on CPU), its memory is not.
- `nano_4b` (`NANO`): the footprint of its float32, bfloat16 and int4 (groups of 32) trees from `jax.eval_shape`,
  nothing allocated. The paper summary's "0.6 GB for 4B parameters" (`PAPER_SUMMARY_4B_GB`) cannot be right: 4e9
  weights at 4 bits are 2 GB before any scale (`nano_4b_4bit_floor_gb`).

Quantizing runs under `jax.jit` (the same codes and scales as the eager call, in a fraction of its time on CPU).
The memory rows are judged against the issue's goal (int4 at least 85% below float32); the speed rows (int4 /
float32, SmolLM2's GGUF blocks beside them) are reported: the issue sets no goal for them.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

import sage_jax as sj
from benchmarks import workloads
from benchmarks.cases import pretrained
from benchmarks.cases.context import CaseResult, Context
from benchmarks.report import Target, describe, figure, ratio, skipped, value
from benchmarks.timing import side_by_side
from sage_jax import layout, quant
from sage_jax.chat import ChatLayout
from sage_jax.interop import MissingModelError, Pretrained, load_gguf, model_path
from sage_jax.interpret.significance import significance

CASE = "quantized"
GOAL_REDUCTION = 0.85
"""The issue's goal: int4 weights at least 85% below float32's."""
MAX_GROUP = 32
"""The largest group size tried: GGUF's Q4_0/Q4_1/Q8_0 block."""
SMOLLM2 = "smollm2-135m-instruct"
NANO = "nano_4b"
PAPER_SUMMARY_4B_GB = 0.6
"""The paper summary's int4 weight memory for 4B parameters, below the 2 GB that 4e9 4-bit codes alone take."""
GB = 1e9
MIB = 2 ** 20

SMOLLM2_CONTENDERS = ("float32", "gguf", "int4")
"""SmolLM2's contenders (`load_smollm2`): its float32 reading, its GGUF blocks as loaded, our int4 of the reading."""
SMOLLM2_BATCH = 1
SMOLLM2_SPEED_UNITS = {f"smollm2_{name}_{kind}": unit for name in SMOLLM2_CONTENDERS for kind, unit in (
    (f"b{SMOLLM2_BATCH}_tokens_per_s", "tokens/s"), (f"b{SMOLLM2_BATCH}_compile_s", "s"),
    (f"b{SMOLLM2_BATCH}_warmup_s", "s"), ("significance_s", "s"), ("significance_compile_s", "s"),
    ("significance_warmup_s", "s"))}
"""SmolLM2's decoding and analysis figures with their units (skipped in quick mode: `QUICK_SKIP`)."""
SMOLLM2_UNITS = {"smollm2_float32_weight_bytes": "bytes", "smollm2_gguf_weight_bytes": "bytes",
                 "smollm2_int4_weight_bytes": "bytes", "smollm2_gguf_reduction": "1", "smollm2_int4_reduction": "1",
                 **SMOLLM2_SPEED_UNITS}
"""SmolLM2's figures with their units (each recorded as skipped without its package)."""
QUICK_SKIP = ("skipped in quick mode: SmolLM2's decoding and analysis for its three contenders add 1.5 to 5 "
              "minutes on 2 CPU cores, mostly compiling; the full run measures them")
"""Why quick mode skips SmolLM2's speed figures: at the quick sizes they took 95 s and 280 s in two runs on a shared
2-core machine, where a quick case may add ~20 s."""


def device_bytes(params) -> int:
    """Bytes the device buffers of `params` hold once placed (a `QTensor`: its codes, scales and minimums)."""
    return sum(int(x.on_device_size_in_bytes()) for x in jax.tree.leaves(jax.device_put(params)))


def abstract_bytes(tree) -> int:
    """Bytes a tree of `jax.ShapeDtypeStruct`s would take: the sum of `size * itemsize` of its leaves."""
    return sum(int(x.size) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def quantize(params, cfg: sj.SageConfig, bits: int, group_size: int | dict[str, int]):
    """`quant.quantize(params, cfg, bits=bits, group_size=group_size)`, symmetric, under `jax.jit`."""
    return jax.jit(functools.partial(quant.quantize, cfg=cfg, bits=bits, group_size=group_size))(params)


def reduction(smaller: dict, float32: dict) -> dict:
    """The fraction `1 - smaller / float32` of two byte figures, as a figure (skipped when either is)."""
    share = ratio(smaller, float32)
    return skipped("1", smaller.get("skipped", float32.get("skipped"))) if share is None else figure(1 - share, "1")


def preset_memory(cfg: sj.SageConfig, params, groups: dict[int, dict[str, int]]) -> tuple[dict, object]:
    """Figures of the preset's weight memory in float32, bfloat16, int8 and int4 (`groups`: bits -> group sizes),
    and the int4 params the timed comparisons use."""
    int4 = quantize(params, cfg, 4, groups[4])
    trees = {"float32": params, "bfloat16": jax.tree.map(lambda x: x.astype(jnp.bfloat16), params),
             "int8": quantize(params, cfg, 8, groups[8]), "int4": int4}
    figures = {f"{name}_weight_bytes": figure(device_bytes(tree), "bytes") for name, tree in trees.items()}
    figures |= {f"{name}_reduction": reduction(figures[f"{name}_weight_bytes"], figures["float32_weight_bytes"])
                for name in ("bfloat16", "int8", "int4")}
    return figures, int4


def load_smollm2(path) -> tuple[Pretrained, dict]:
    """SmolLM2 read from its GGUF file `path`, and its three contenders (`SMOLLM2_CONTENDERS`): the float32
    reading, the GGUF blocks as loaded (`quantized=True`: the same values) and our symmetric int4 of the reading."""
    model = load_gguf(path)
    return model, {"float32": model.params, "gguf": load_gguf(path, quantized=True).params,
                   "int4": quantize(model.params, model.cfg, 4, MAX_GROUP)}


def smollm2_memory(cfg: sj.SageConfig, trees: dict) -> tuple[dict, dict]:
    """Figures of SmolLM2's weight memory, one per `load_smollm2` contender, with the quantized ones' reductions,
    and settings naming the GGUF's block layout."""
    figures = {f"smollm2_{name}_weight_bytes": figure(device_bytes(tree), "bytes") for name, tree in trees.items()}
    figures |= {f"smollm2_{name}_reduction": reduction(figures[f"smollm2_{name}_weight_bytes"],
                                                       figures["smollm2_float32_weight_bytes"])
                for name in ("gguf", "int4")}
    leaves = jax.tree_util.tree_flatten_with_path(trees["gguf"], is_leaf=lambda x: isinstance(x, quant.QTensor))[0]
    kinds = {"/".join(k.key for k in keys): f"{q.bits}-bit{'' if q.symmetric else ' with minimums'}, groups of "
                                            f"{q.group_size}" for keys, q in leaves if isinstance(q, quant.QTensor)}
    return figures, dict(model=SMOLLM2, params=sj.param_count(cfg), int4_group_size=MAX_GROUP, gguf_blocks=kinds)


def smollm2(ctx: Context) -> tuple[dict, dict]:
    """Figures and settings of SmolLM2: its weight memory, and its decoding and exact analysis unless `ctx.quick`
    (`QUICK_SKIP`); every figure skipped when the model's package is missing, so the case still succeeds."""
    try:
        path = model_path(SMOLLM2)
    except MissingModelError as error:
        print(f"{'!' * 78}\n!! [{CASE}] SmolLM2 SKIPPED: {error}\n{'!' * 78}", file=sys.stderr, flush=True)
        return ({name: skipped(unit, f"skipped: {error}") for name, unit in SMOLLM2_UNITS.items()},
                dict(model=SMOLLM2, skipped=str(error)))
    model, trees = load_smollm2(path)
    figures, settings = smollm2_memory(model.cfg, trees)
    if ctx.quick:
        return (figures | {name: skipped(unit, QUICK_SKIP) for name, unit in SMOLLM2_SPEED_UNITS.items()},
                settings | dict(speed_skipped=QUICK_SKIP))
    speed_figures, speed_settings = smollm2_speed(ctx, model, trees)
    return figures | speed_figures, settings | speed_settings


def shared_eos(cfg: sj.SageConfig, trees: dict, prompt: jax.Array, new_tokens: int,
               first: int) -> tuple[int, dict]:
    """An end token that greedy decoding of `prompt [B, P]` emits under none of `trees` (name -> params),
    `first` when it qualifies (`workloads.free_eos` for several models), and each tree's generation compiled
    ahead of time for it (name -> `(compiled, compile seconds)`).

    Every contender then generates exactly `new_tokens` tokens, though int4 decoding may emit the float model's
    end token. The compiled generations are what test a candidate, so nothing is compiled twice: on SmolLM2 each
    compilation takes tens of seconds.
    """
    candidate = first
    for _ in range(cfg.vocab_size):
        gens = {name: workloads.aot(workloads.generation(cfg, new_tokens, candidate, track=False), p, prompt)
                for name, p in trees.items()}
        outs = [gens[name][0](p, prompt) for name, p in trees.items()]
        emitted = set().union(*(np.asarray(o.tokens[:, prompt.shape[1]:]).ravel().tolist() for o in outs))
        if candidate not in emitted and all(np.all(np.asarray(o.num_generated) == new_tokens) for o in outs):
            return candidate, gens
        candidate = min(set(range(layout.NUM_SPECIAL, cfg.vocab_size)) - emitted)
    raise RuntimeError("greedy decoding emits every token id; no end token leaves the generation uncut")


def decode(cfg: sj.SageConfig, trees: dict, prompt: jax.Array, new_tokens: int, first_eos: int, repeats: int,
           prefix: str = "") -> tuple[dict, int]:
    """Figures `{prefix}{name}_b{B}_*` of greedy decoding of `prompt [B, P]`, `new_tokens` tokens a row, one
    contender per `trees` entry (name -> params), compiled ahead of time and timed alternately in one
    `side_by_side`; and the end token they share (`shared_eos`, from `first_eos`). `shared_eos` makes each
    compiled generation's first call, so `*_warmup_s` is its second."""
    batch = prompt.shape[0]
    eos_id, gens = shared_eos(cfg, trees, prompt, new_tokens, first_eos)
    figures = {f"{prefix}{name}_b{batch}_compile_s": figure(compile_s, "s") for name, (_, compile_s) in gens.items()}
    contenders = {name: lambda g=gen, p=trees[name]: jax.block_until_ready(g(p, prompt))
                  for name, (gen, _) in gens.items()}
    for name, t in side_by_side(contenders, repeats).items():
        figures[f"{prefix}{name}_b{batch}_tokens_per_s"] = figure(batch * new_tokens / t.median_s, "tokens/s")
        figures[f"{prefix}{name}_b{batch}_warmup_s"] = figure(t.warmup_s, "s")
    return figures, eos_id


def analysis(cfg: sj.SageConfig, trees: dict, tokens: jax.Array, steps: layout.Steps, repeats: int,
             prefix: str = "") -> tuple[dict, dict[str, float]]:
    """Figures `{prefix}{name}_significance*` of the exact significance (Eq. 7, attention weighting, probe at
    layer 0) of every step of one chain `tokens [T]`, one contender per `trees` entry, compiled ahead of time and
    timed alternately in one `side_by_side`; and the largest absolute difference of each other contender's map
    `[n_steps, T]` from `trees["float32"]`'s (name -> difference)."""
    figures, contenders = {}, {}
    for name, params in trees.items():
        sig, compile_s = workloads.aot(lambda p, t, st: significance(p, cfg, t, st, weighting="attention").score,
                                       params, tokens, steps)
        figures[f"{prefix}{name}_significance_compile_s"] = figure(compile_s, "s")
        contenders[name] = lambda s=sig, p=params: jax.block_until_ready(s(p, tokens, steps))
    for name, t in side_by_side(contenders, repeats).items():
        figures[f"{prefix}{name}_significance_s"] = figure(t.median_s, "s")
        figures[f"{prefix}{name}_significance_warmup_s"] = figure(t.warmup_s, "s")
    maps = {name: np.asarray(score()) for name, score in contenders.items()}
    return figures, {name: float(np.abs(m - maps["float32"]).max()) for name, m in maps.items() if name != "float32"}


def preset_speed(ctx: Context, trees: dict) -> tuple[dict, dict]:
    """Figures and settings of the preset's decoding (the `decode` case's first batch and `new_tokens`) and
    exact analysis (the `significance` case's first chain, `workloads.chain`), one contender per `trees` entry."""
    s = ctx.sizes
    figures, eos_id = decode(ctx.cfg, trees, ctx.prompt(s.decode_batches[0]), s.new_tokens, ctx.eos_id, ctx.repeats)
    length = s.chain_lengths[0]
    cfg = ctx.cfg.replace(max_seq_len=length)
    analysis_figures, diffs = analysis(cfg, trees, *workloads.chain(cfg, length, s.chain_steps), ctx.repeats)
    return figures | analysis_figures, dict(
        decode=dict(batch=s.decode_batches[0], prompt_len=s.prompt_len, new_tokens=s.new_tokens, greedy=True,
                    eos_id=eos_id, same_eos_as_decode_case=eos_id == ctx.eos_id),
        analysis=dict(chain_len=length, steps=s.chain_steps, weighting="attention", probe_layer=0,
                      int4_max_abs_score_diff=diffs["int4"]))


def smollm2_chain(model: Pretrained, n_steps: int) -> tuple[jax.Array, jax.Array, layout.Steps]:
    """The `pretrained` case's decoding prompt `[1, P]` and analysed chain `[T]` with its `n_steps` steps: a sum
    worked one addition per line (`pretrained.problem`) in SmolLM2's own chat template."""
    chat = ChatLayout.for_pretrained(model)
    question, lines, answer = pretrained.problem(n_steps)
    example = chat.encode(chat.codec, question, lines, answer)
    prompt = jnp.asarray(chat.prompt(chat.codec, question), jnp.int32)[None]
    return prompt, jnp.asarray(example.tokens), layout.from_spans(example.step_spans, len(example))


def smollm2_speed(ctx: Context, model: Pretrained, trees: dict) -> tuple[dict, dict]:
    """Figures and settings of SmolLM2's greedy decoding (batch 1, the `pretrained` case's `new_tokens` for
    `ctx.quick`) and exact analysis (its chain), one contender per `trees` entry (`SMOLLM2_CONTENDERS`)."""
    sizes = pretrained.sizes_for(ctx.quick)
    prompt, tokens, steps = smollm2_chain(model, sizes.chain_steps)
    figures, eos_id = decode(model.cfg, trees, prompt, sizes.new_tokens, model.cfg.eos_id, ctx.repeats, "smollm2_")
    analysis_figures, diffs = analysis(model.cfg, trees, tokens, steps, ctx.repeats, "smollm2_")
    figures |= analysis_figures
    ctx.log(CASE, "SmolLM2 decode " + ", ".join(
        f"{name} {describe(figures[f'smollm2_{name}_b{SMOLLM2_BATCH}_tokens_per_s'])}" for name in trees))
    return figures, dict(
        decode=dict(batch=SMOLLM2_BATCH, prompt_len=prompt.shape[1], new_tokens=sizes.new_tokens, greedy=True,
                    eos_id=eos_id, eos_is_the_models=eos_id == model.cfg.eos_id),
        analysis=dict(chain="pretrained.problem in the chat template, as the pretrained case",
                      chain_len=int(tokens.shape[0]), steps=sizes.chain_steps, weighting="attention", probe_layer=0,
                      **{f"{name}_max_abs_score_diff": diff for name, diff in diffs.items()}))


def nano_footprints(cfg: sj.SageConfig, group_size: int = MAX_GROUP) -> dict[str, int]:
    """Bytes `cfg`'s parameters take in float32, bfloat16 and int4 (`group_size`), from `jax.eval_shape` of
    `init_params` and of `quant.quantize` over it: nothing is allocated."""
    key = jax.random.key(0)
    floats = jax.eval_shape(lambda k: sj.init_params(cfg, k), key)
    int4 = jax.eval_shape(lambda k: quant.quantize(sj.init_params(cfg, k), cfg, bits=4, group_size=group_size), key)
    count = sum(int(x.size) for x in jax.tree.leaves(floats))
    return dict(float32=4 * count, bfloat16=2 * count, int4=abstract_bytes(int4), count=count)


def nano_figures(cfg: sj.SageConfig) -> dict:
    """`nano_4b`'s footprints in GB, its int4 reduction, and the 4-bit floor (every parameter at 4 bits)."""
    sizes = nano_footprints(cfg)
    figures = {f"nano_4b_{name}_gb": figure(sizes[name] / GB, "GB") for name in ("float32", "bfloat16", "int4")}
    figures["nano_4b_int4_reduction"] = figure(1 - sizes["int4"] / sizes["float32"], "1")
    figures["nano_4b_4bit_floor_gb"] = figure(sizes["count"] * 0.5 / GB, "GB")
    return figures


def run(ctx: Context) -> CaseResult:
    """Measures the weight memory, decoding and the exact analysis of the preset in float32 and int4, the same
    for SmolLM2's three contenders (decoding and analysis outside quick mode), and `nano_4b`'s footprints."""
    cfg = ctx.cfg
    groups = {bits: quant.largest_group_sizes(cfg, bits, MAX_GROUP) for bits in quant.BITS}
    figures, int4 = preset_memory(cfg, ctx.params, groups)
    speed_figures, speed_settings = preset_speed(ctx, {"float32": ctx.params, "int4": int4})
    smollm2_figures, smollm2_settings = smollm2(ctx)
    figures |= speed_figures | smollm2_figures | nano_figures(sj.configs.get(NANO))
    settings = dict(
        preset=cfg.name, symmetric=True, scale_dtype="float16", int8_group_sizes=groups[8],
        int4_group_sizes=groups[4], memory="on_device_size_in_bytes() of every params array after jax.device_put",
        **speed_settings, smollm2=smollm2_settings,
        nano_4b=dict(params=sj.param_count(sj.configs.get(NANO)), int4_group_size=MAX_GROUP,
                     note=f"the paper summary's {PAPER_SUMMARY_4B_GB} GB for 4B int4 parameters cannot be right: 4e9 "
                          "weights at 4 bits are 2 GB before any scale (nano_4b_4bit_floor_gb)"))
    batch = ctx.sizes.decode_batches[0]
    ctx.log(CASE, f"int4 {describe(figures['int4_reduction'], 100, '%')} below float32; decode int4 "
                  f"{describe(figures[f'int4_b{batch}_tokens_per_s'])}, float32 "
                  f"{describe(figures[f'float32_b{batch}_tokens_per_s'])}")
    return CaseResult(settings, figures, targets(figures, settings))


def _memory_row(name: str, reduced: str, figures: dict, prefix: str = "", threshold=GOAL_REDUCTION,
                extra: str = "") -> Target:
    """A row of weight memory: `{prefix}{reduced}` below `{prefix}float32`, judged against `threshold` (`None`:
    reported), `extra` appended to the measured figures."""
    bytes_ = {k: figures[f"{prefix}{k}_weight_bytes"] for k in ("float32", reduced)}
    return Target(CASE, name, ">=" if threshold else "", threshold, value(figures[f"{prefix}{reduced}_reduction"]),
                  f"{describe(bytes_[reduced], 1 / MIB, 'MiB', 4)} vs float32 "
                  f"{describe(bytes_['float32'], 1 / MIB, 'MiB', 4)}{extra}")


def targets(figures: dict, settings: dict) -> list[Target]:
    """The table's rows: int4 weight memory against the issue's goal (preset, SmolLM2, `nano_4b`), SmolLM2's GGUF
    blocks reported, then decoding and the analysis, int4 against float32 (reported): the preset's, SmolLM2's."""
    preset, g4, g8 = (settings["preset"], quant.describe_groups(settings["int4_group_sizes"]),
                      quant.describe_groups(settings["int8_group_sizes"]))
    batch, n = settings["decode"]["batch"], settings["decode"]["new_tokens"]
    others = (f"; int8 ({g8}) {describe(figures['int8_weight_bytes'], 1 / MIB, 'MiB', 4)}, bfloat16 "
              f"{describe(figures['bfloat16_weight_bytes'], 1 / MIB, 'MiB', 4)}")
    gb = {k: describe(figures[f"nano_4b_{k}_gb"], digits=4) for k in ("float32", "bfloat16", "int4", "4bit_floor")}
    float_s, int4_s = (describe(figures[f"{k}_significance_s"], 1e3, "ms") for k in ("float32", "int4"))
    return [
        _memory_row(f"{preset} int4 ({g4}) weight memory: reduction vs float32", "int4", figures,
                    extra=others),
        _memory_row(f"SmolLM2 int4 (groups of {MAX_GROUP}) of its float reading, weight memory: reduction vs float32",
                    "int4", figures, "smollm2_"),
        _memory_row("SmolLM2 GGUF blocks as loaded (Q4_1 layers, Q8_0 embedding), weight memory: reduction vs "
                    "float32", "gguf", figures, "smollm2_", None),
        Target(CASE, f"{NANO} int4 (groups of {MAX_GROUP}) footprint (eval_shape): reduction vs float32", ">=",
               GOAL_REDUCTION, value(figures["nano_4b_int4_reduction"]),
               f"int4 {gb['int4']}, bfloat16 {gb['bfloat16']}, float32 {gb['float32']}; 4 bits a parameter alone: "
               f"{gb['4bit_floor']} (the paper summary's {PAPER_SUMMARY_4B_GB} GB cannot be right)"),
        Target(CASE, f"greedy decode, batch {batch}, {n} new tokens: tokens/s, int4 / float32", "", None,
               ratio(figures[f"int4_b{batch}_tokens_per_s"], figures[f"float32_b{batch}_tokens_per_s"]),
               f"int4 {describe(figures[f'int4_b{batch}_tokens_per_s'])}, float32 "
               f"{describe(figures[f'float32_b{batch}_tokens_per_s'])}"),
        Target(CASE, f"exact significance (Eq. 7), all {settings['analysis']['steps']} steps of a "
                     f"{settings['analysis']['chain_len']}-token chain: time, int4 / float32", "", None,
               ratio(figures["int4_significance_s"], figures["float32_significance_s"]),
               f"int4 {int4_s}, float32 {float_s}; max abs score diff "
               f"{settings['analysis']['int4_max_abs_score_diff']:.2g}"),
        *smollm2_speed_rows(figures, settings["smollm2"]),
    ]


def smollm2_speed_rows(figures: dict, settings: dict) -> list[Target]:
    """SmolLM2's reported rows, int4 / float32 with the GGUF blocks beside them: decoding tokens/s and the
    exact analysis's time, with the sizes and score differences from `settings` (SmolLM2's) when measured."""
    decode_, analysis_ = settings.get("decode"), settings.get("analysis")
    decode_text = (f"; {decode_['new_tokens']} new tokens after a {decode_['prompt_len']}-token chat prompt"
                   if decode_ else "")
    analysis_text = (f"; {analysis_['steps']} steps of a {analysis_['chain_len']}-token chat chain; max abs score "
                     f"diff from float32: int4 {analysis_['int4_max_abs_score_diff']:.2g}, blocks "
                     f"{analysis_['gguf_max_abs_score_diff']:.2g}" if analysis_ else "")
    return [_smollm2_row(f"SmolLM2 greedy decode, batch {SMOLLM2_BATCH}: tokens/s, int4 / float32",
                         f"b{SMOLLM2_BATCH}_tokens_per_s", figures, 1.0, None, decode_text),
            _smollm2_row("SmolLM2 exact significance (Eq. 7), every step of one chain: time, int4 / float32",
                         "significance_s", figures, 1e3, "ms", analysis_text)]


def _smollm2_row(name: str, key: str, figures: dict, scale: float, unit: str | None, extra: str) -> Target:
    """A reported row of SmolLM2's `smollm2_{contender}_{key}` figures: int4 / float32, the GGUF blocks' figure
    and their own ratio to float32 in the measured text, `extra` appended; a skipped row says why instead."""
    f = {c: figures[f"smollm2_{c}_{key}"] for c in SMOLLM2_CONTENDERS}
    if value(f["int4"]) is None:
        return Target(CASE, name, "", None, None, f["int4"]["skipped"])
    return Target(CASE, name, "", None, ratio(f["int4"], f["float32"]),
                  f"int4 {describe(f['int4'], scale, unit)}, GGUF blocks {describe(f['gguf'], scale, unit)} "
                  f"(x{ratio(f['gguf'], f['float32']):.3g} float32), float32 {describe(f['float32'], scale, unit)}"
                  f"{extra}")
