"""The orthogonality regularizer: factored penalty vs dense, SVD, PEFT wiring, TRL trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from safelora.training.ortho_reg import (
    OrthoRegConfig,
    OrthoRegularizer,
    base_weight_name,
    ortho_penalty_factored,
    span_penalty_factored,
)
from safelora.weights import truncated_svd

MLP = ["gate_proj", "up_proj", "down_proj"]
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]


def dense_penalty(A, B, scale, W_num, w_norm, mode):
    """The paper's formula with every matrix materialized (W_num: the W_I used in numerators)."""
    delta = scale * B @ A
    denominator = w_norm * torch.linalg.matrix_norm(delta)
    penalty = (torch.linalg.matrix_norm(W_num.T @ delta) / denominator) ** 2
    if mode == "both":
        penalty = penalty + (torch.linalg.matrix_norm(W_num @ delta.T) / denominator) ** 2
    return penalty


def factors(out_f=24, in_f=16, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    A = torch.randn(r, in_f, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(out_f, r, generator=g, dtype=torch.float64, requires_grad=True)
    return W, A, B


@pytest.mark.parametrize("mode", ["col", "both"])
@pytest.mark.parametrize("k", [16, 5])  # 16 = min(out, in): exact; 5: truncated
def test_factored_penalty_and_gradient_match_dense(mode, k):
    W, A, B = factors()
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    U, S, V = u[:, :k], s[:k], vh[:k].T
    w_norm = torch.linalg.matrix_norm(W)
    W_k = U @ torch.diag(S) @ V.T
    scale = 16 / 3

    got = ortho_penalty_factored(A, B, scale, U, S, V, w_norm, mode)
    want = dense_penalty(A, B, scale, W_k, w_norm, mode)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    if k == 16:
        torch.testing.assert_close(want, dense_penalty(A, B, scale, W, w_norm, mode), rtol=1e-9, atol=0)

    grads = torch.autograd.grad(got, (A, B))
    want_grads = torch.autograd.grad(want, (A, B))
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-12)


def test_row_term_is_not_the_col_term_transposed():
    # ‖ΔWᵀ W_I‖ = ‖W_Iᵀ ΔW‖ always, so 'both' must use ‖W_I ΔWᵀ‖ to add information.
    W, A, B = factors()
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    args = (A, B, 1.0, u, s, vh.T, torch.linalg.matrix_norm(W))
    col = ortho_penalty_factored(*args, "col")
    both = ortho_penalty_factored(*args, "both")
    delta = B @ A
    row = (torch.linalg.matrix_norm(W @ delta.T) / (args[-1] * torch.linalg.matrix_norm(delta))) ** 2
    torch.testing.assert_close(both - col, row.detach(), rtol=1e-9, atol=0)
    assert not torch.isclose(both, 2 * col)


def test_batched_layers_match_one_by_one():
    items = [factors(seed=i) for i in range(3)]
    svds = [torch.linalg.svd(W, full_matrices=False) for W, _, _ in items]
    U = torch.stack([u[:, :4] for u, _, _ in svds])
    S = torch.stack([s[:4] for _, s, _ in svds])
    V = torch.stack([vh[:4].T for _, _, vh in svds])
    norms = torch.stack([torch.linalg.matrix_norm(W) for W, _, _ in items])
    scales = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    A = torch.stack([a for _, a, _ in items])
    B = torch.stack([b for _, _, b in items])
    batched = ortho_penalty_factored(A, B, scales, U, S, V, norms, "both")
    single = [ortho_penalty_factored(A[i], B[i], scales[i], U[i], S[i], V[i], norms[i], "both") for i in range(3)]
    torch.testing.assert_close(batched, torch.stack(single))


@pytest.mark.parametrize("mode", ["col", "both"])
def test_zero_update_gives_zero_penalty_and_finite_zero_gradient(mode):
    W, A, B = factors()
    B = torch.zeros_like(B, requires_grad=True)
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    penalty = ortho_penalty_factored(A, B, 4.0, u, s, vh.T, torch.linalg.matrix_norm(W), mode)
    assert penalty.item() == 0.0
    grad_a, grad_b = torch.autograd.grad(penalty, (A, B))
    assert torch.all(grad_a == 0) and torch.all(grad_b == 0)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", ["col", "both"])
def test_span_penalty_at_zero_update_is_zero_with_zero_gradient(mode, normalize):
    W, A, B = factors()
    B = torch.zeros_like(B, requires_grad=True)
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    penalty = span_penalty_factored(A, B, u[:, :5], s[:5], vh[:5].T, mode, normalize=normalize)
    assert penalty.item() == 0.0
    grad_a, grad_b = torch.autograd.grad(penalty, (A, B))
    assert torch.all(grad_a == 0) and torch.all(grad_b == 0)


def test_penalty_is_at_most_one_per_term_and_invariant_to_update_scale():
    W, A, B = factors()
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    args = (u, s, vh.T, torch.linalg.matrix_norm(W), "both")
    p1 = ortho_penalty_factored(A, B, 1.0, *args)
    p2 = ortho_penalty_factored(A, 1e-3 * B, 7.0, *args)
    torch.testing.assert_close(p1, p2, rtol=1e-6, atol=0)
    assert 0 < p1.item() <= 2


def test_unknown_mode_is_rejected():
    W, A, B = factors()
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    with pytest.raises(ValueError, match="mode"):
        ortho_penalty_factored(A, B, 1.0, u, s, vh.T, 1.0, "row")


def decaying_matrix(out_f, in_f, seed=0):
    g = torch.Generator().manual_seed(seed)
    q1 = torch.linalg.qr(torch.randn(out_f, in_f, generator=g)).Q
    q2 = torch.linalg.qr(torch.randn(in_f, in_f, generator=g)).Q
    sigma = 1.0 / torch.arange(1, in_f + 1, dtype=torch.float32) ** 0.7
    return q1 @ torch.diag(sigma) @ q2.T


def test_randomized_svd_is_close_to_exact_and_leaves_global_rng_alone():
    W = decaying_matrix(400, 160)
    state = torch.get_rng_state()
    f, _ = truncated_svd(W, 16, oversample=10, power_iters=4, seed=3)
    U, S, V = f.U, f.S, f.V
    assert torch.equal(torch.get_rng_state(), state)
    assert U.shape == (400, 16) and S.shape == (16,) and V.shape == (160, 16)
    _, s_exact, _ = torch.linalg.svd(W)
    torch.testing.assert_close(S, s_exact[:16], rtol=1e-3, atol=0)
    torch.testing.assert_close(U.T @ U, torch.eye(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(V.T @ V, torch.eye(16), atol=1e-5, rtol=0)
    residual = torch.linalg.matrix_norm(W - U @ torch.diag(S) @ V.T)
    optimal = torch.linalg.vector_norm(s_exact[16:])
    assert residual <= 1.001 * optimal
    f, _ = truncated_svd(W, 16, oversample=10, power_iters=4, seed=3)
    U2, S2, V2 = f.U, f.S, f.V
    assert torch.equal(U, U2) and torch.equal(S, S2) and torch.equal(V, V2)


def test_svd_is_exact_when_oversampled_rank_covers_the_matrix():
    W = decaying_matrix(40, 20)
    f, _ = truncated_svd(W, 30, oversample=0)
    U, S, V = f.U, f.S, f.V
    assert S.shape == (20,)
    torch.testing.assert_close(U @ torch.diag(S) @ V.T, W, atol=1e-5, rtol=0)


def tiny_peft_model(targets, seed=0, init_lora_weights=True, **lora_options):
    torch.manual_seed(seed)
    config = Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=62,
        pad_token_id=60,
        eos_token_id=61,
    )
    model = Qwen2ForCausalLM(config)
    base_names = {n for n, _ in model.named_parameters()}
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=init_lora_weights, **lora_options)
    return get_peft_model(model, lora), base_names


def randomize_lora_b(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(("targets", "n_layers"), [(MLP, 6), (MLP + ATTN, 14)])
def test_finds_every_lora_layer_under_base_weight_names(targets, n_layers):
    model, base_names = tiny_peft_model(targets)
    reg = OrthoRegularizer(model, OrthoRegConfig(mode="col", rank=8))
    assert len(reg.names) == n_layers == len(set(reg.names))
    assert set(reg.names) <= base_names
    kinds = {n.split(".")[-2] for n in reg.names}
    assert kinds == set(targets)
    assert reg.penalty().item() == 0.0  # B = 0 at LoRA's initialization


def test_a_layer_range_adapter_is_regularized_on_its_modules_only():
    """LoRA on up_proj of layer 1 of 2 (PEFT options as training sets them): the penalty is that one
    module's dense penalty, and only its factors get a gradient."""
    from safelora.config import lora_fields

    options = lora_fields(4, ["up_proj"], alpha=16, dropout=0.0, layers=[1, 1])
    model, _ = tiny_peft_model(
        options["target_modules"], **{k: options[k] for k in ("layers_to_transform", "layers_pattern")}
    )
    randomize_lora_b(model)
    reg = OrthoRegularizer(model, OrthoRegConfig(mode="both", rank=64, oversample=64))
    assert reg.names == ["model.layers.1.mlp.up_proj.weight"]
    (module,) = [m for _, m in model.named_modules() if hasattr(m, "lora_A")]
    a, b, w = module.lora_A["default"].weight, module.lora_B["default"].weight, module.base_layer.weight.detach()
    penalty = reg.penalty()
    want = dense_penalty(a, b, module.scaling["default"], w, torch.linalg.matrix_norm(w), "both")
    torch.testing.assert_close(penalty, want, rtol=1e-4, atol=0)
    penalty.backward()
    assert a.grad is not None and float(a.grad.abs().sum()) > 0


def test_base_weight_name_strips_peft_prefix():
    assert base_weight_name("base_model.model.model.layers.3.mlp.up_proj") == "model.layers.3.mlp.up_proj.weight"


@pytest.mark.parametrize("mode", ["col", "both"])
def test_model_penalty_is_sum_of_dense_layer_penalties(mode):
    model, _ = tiny_peft_model(MLP + ATTN)
    randomize_lora_b(model)
    # rank 64 + oversample 64 covers every matrix: the SVD is exact, W_k = W_I.
    reg = OrthoRegularizer(model, OrthoRegConfig(mode=mode, rank=64, oversample=64, beta=2.0))  # default: sum
    dense = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            W = module.base_layer.weight.detach()
            dense[base_weight_name(name)] = 2.0 * dense_penalty(
                module.lora_A["default"].weight,
                module.lora_B["default"].weight,
                module.scaling["default"],
                W,
                torch.linalg.matrix_norm(W),
                mode,
            )
    per_layer = reg.per_layer()
    assert per_layer.keys() == dense.keys()
    for name in dense:
        torch.testing.assert_close(per_layer[name], dense[name], rtol=1e-4, atol=0)
    all_dense = torch.stack(list(dense.values()))
    torch.testing.assert_close(reg.penalty(), all_dense.sum(), rtol=1e-4, atol=0)
    mean = OrthoRegularizer(model, OrthoRegConfig(mode=mode, rank=64, oversample=64, beta=2.0, reduction="mean"))
    torch.testing.assert_close(mean.penalty(), all_dense.mean(), rtol=1e-4, atol=0)


def dense_span_penalty(A, B, W, k, mode, weighted, normalize, eps=1e-12):
    """The paper code's penalty (models.py:30-57, 92-100) in plain numpy, every matrix materialized:
    spans from the rank-k SVD of W, normalized only when weighted (models.py:33-34, 50-52), ΔW = B·A
    without LoRA scaling."""
    u, s, vh = np.linalg.svd(W, full_matrices=False)
    d = np.diag(s[:k]) if weighted else np.eye(k)
    span_c, span_r = d @ u[:, :k].T, vh[:k].T @ d
    if normalize and weighted:
        span_c, span_r = span_c / np.linalg.norm(span_c), span_r / np.linalg.norm(span_r)
    delta = B @ A
    product = span_c @ delta if mode == "col" else span_c @ delta @ span_r
    penalty = np.linalg.norm(product) ** 2
    return penalty / (np.linalg.norm(delta) ** 2 + eps) if normalize else penalty


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("mode", ["col", "both"])
def test_span_variants_match_dense_numpy_reference(mode, weighted, normalize):
    """Each of the paper code's variants, per layer and summed over a model's LoRA layers."""
    model, _ = tiny_peft_model(MLP + ATTN)
    randomize_lora_b(model)
    k = 8
    config = OrthoRegConfig(
        mode=mode, rank=k, oversample=64, beta=3.0, formula="span", weighted=weighted, normalize=normalize
    )
    reg = OrthoRegularizer(model, config)  # oversample 64 covers every matrix: exact SVD, truncated to k
    dense = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            A, B, W = (
                t.detach().double().numpy()
                for t in (module.lora_A["default"].weight, module.lora_B["default"].weight, module.base_layer.weight)
            )
            dense[base_weight_name(name)] = 3.0 * dense_span_penalty(A, B, W, k, mode, weighted, normalize)
    per_layer = reg.per_layer()
    assert per_layer.keys() == dense.keys()
    for name, want in dense.items():
        np.testing.assert_allclose(per_layer[name].item(), want, rtol=1e-4)
    np.testing.assert_allclose(reg.penalty().item(), sum(dense.values()), rtol=1e-4)


def paper_code_regularizer(model, k, mode, weighted, normalize, targets=("gate_proj", "up_proj", "down_proj")):
    """models.py's regularizer re-computed as the code runs it on a PEFT model, from reading it:
    one loop over `named_modules()` whose names contain a target, building each module's spans with
    a k that the loop carries over (`k = min(k, min(weight.shape))`, l.14-57), then the penalty over
    the modules with `lora_A` and `lora_B` (l.69-102). Exact SVD and float64 instead of
    `svd_lowrank` and bf16. Returns ({module name: penalty}, {module name: k of its spans})."""
    spans, ks = {}, {}
    for name, module in model.named_modules():
        if any(t in name for t in targets) and hasattr(module, "weight"):
            weight = module.weight.detach().double()
            k = min(k, min(weight.shape))
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)
            u, s, v = u[:, :k], s[:k], vh[:k].T
            if weighted:
                span_c, span_r = torch.diag(s) @ u.T, v @ torch.diag(s)
                if normalize:
                    span_c, span_r = (
                        span_c / torch.linalg.matrix_norm(span_c),
                        span_r / torch.linalg.matrix_norm(span_r),
                    )
            else:
                span_c, span_r = u.T, v
            spans[name], ks[name] = (span_c, span_r), k
    penalties = {}
    for name, module in model.named_modules():
        if any(t in name for t in targets) and hasattr(module, "lora_A") and hasattr(module, "lora_B"):
            delta = (
                module.lora_B["default"].weight.detach().double() @ module.lora_A["default"].weight.detach().double()
            )
            span_c, span_r = spans[name]
            product = span_c @ delta if mode == "col" else span_c @ delta @ span_r
            penalty = torch.linalg.matrix_norm(product) ** 2
            if normalize:
                penalty = penalty / (torch.linalg.matrix_norm(delta) ** 2 + 1e-8)
            penalties[name] = penalty.item()
    return penalties, {name: ks[name] for name in penalties}


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("mode", ["col", "both"])
def test_paper_code_setting_matches_the_code_recomputed_on_the_model(mode, weighted, normalize):
    """k_schedule paper_code + formula span + eps 1e-8 is the code's regularizer, k included: the
    first adapted module (layer 0's gate_proj) keeps k = 16, every later one gets r = 4."""
    model, _ = tiny_peft_model(MLP)  # r = 4; gate/up 128 x 64, down 64 x 128
    randomize_lora_b(model)
    want, want_k = paper_code_regularizer(model, 16, mode, weighted, normalize)
    first = "base_model.model.model.layers.0.mlp.gate_proj"
    assert want_k == {name: 16 if name == first else 4 for name in want}
    config = dict(mode=mode, rank=16, oversample=64, beta=2.0, formula="span", weighted=weighted, normalize=normalize)
    reg = OrthoRegularizer(model, OrthoRegConfig(**config, k_schedule="paper_code", eps=1e-8))
    assert reg.ranks == {base_weight_name(n): k for n, k in want_k.items()}
    per_layer = reg.per_layer()
    for name, penalty in want.items():
        np.testing.assert_allclose(per_layer[base_weight_name(name)].item(), 2.0 * penalty, rtol=1e-4)
    np.testing.assert_allclose(reg.penalty().item(), 2.0 * sum(want.values()), rtol=1e-4)
    fixed = OrthoRegularizer(model, OrthoRegConfig(**config, eps=1e-8))  # k = 16 everywhere
    assert set(fixed.ranks.values()) == {16}
    assert abs(fixed.penalty().item() - reg.penalty().item()) > 1e-3 * reg.penalty().item()


def test_paper_code_ranks_follow_the_first_adapted_module():
    model, _ = tiny_peft_model(MLP + ATTN)
    paper = OrthoRegularizer(model, OrthoRegConfig(mode="col", rank=64, k_schedule="paper_code")).ranks
    assert list(paper.values()) == [64] + [4] * (len(paper) - 1)  # layer 0's q_proj comes first
    assert next(iter(paper)) == "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize("mode", ["col", "both"])
def test_optimizer_steps_on_the_penalty_reduce_it(mode):
    model, _ = tiny_peft_model(MLP)
    randomize_lora_b(model)
    reg = OrthoRegularizer(model, OrthoRegConfig(mode=mode, rank=8))
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad]
    assert lora_params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.Adam(lora_params, lr=1e-2)
    start = reg.penalty().item()
    for _ in range(10):
        opt.zero_grad()
        reg.penalty().backward()
        opt.step()
    assert reg.penalty().item() < 0.5 * start


def test_svd_cache_file_gives_the_same_penalty(tmp_path):
    model, _ = tiny_peft_model(MLP)
    randomize_lora_b(model)
    tensors = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            f, _ = truncated_svd(module.base_layer.weight, 64)  # exact: 64 + oversample covers it
            U, S, V = f.U, f.S, f.V
            param = base_weight_name(name)
            tensors |= {f"{param}.U": U, f"{param}.S": S, f"{param}.V": V}
    cache = tmp_path / "svd.safetensors"
    metadata = {"k": "64", "modules": json.dumps(MLP)}  # as compute_base_svd writes it
    save_file(tensors, cache, metadata=metadata)

    exact = OrthoRegularizer(model, OrthoRegConfig(rank=8, oversample=64))  # exact SVD, truncated to 8
    cached = OrthoRegularizer(model, OrthoRegConfig(rank=8, svd_cache=str(cache)))
    torch.testing.assert_close(cached.penalty(), exact.penalty(), rtol=1e-5, atol=0)

    # k is capped at min(out, in) = 64 before the cache is asked
    capped = OrthoRegularizer(model, OrthoRegConfig(rank=65, svd_cache=str(cache)))
    assert set(capped.ranks.values()) == {64}
    small = tmp_path / "svd4.safetensors"
    save_file({k: v[..., :4].contiguous() for k, v in tensors.items()}, small, metadata={**metadata, "k": "4"})
    with pytest.raises(ValueError, match="asked for 8 singular vectors, the cache holds 4"):
        OrthoRegularizer(model, OrthoRegConfig(rank=8, svd_cache=str(small)))
    first = next(iter(tensors)).removesuffix(".U")
    save_file({k: v for k, v in tensors.items() if not k.startswith(first)}, cache, metadata=metadata)
    with pytest.raises(KeyError, match="no SVD of 1 weights"):
        OrthoRegularizer(model, OrthoRegConfig(rank=8, svd_cache=str(cache)))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        OrthoRegConfig(mode="row")
    with pytest.raises(ValueError):
        OrthoRegConfig(reduction="max")
    with pytest.raises(ValueError):
        OrthoRegConfig(formula="dense")
    with pytest.raises(ValueError, match="formula='span' only"):
        OrthoRegConfig(normalize=True)
    with pytest.raises(ValueError):
        OrthoRegConfig(rank=0)
    with pytest.raises(ValueError):
        OrthoRegConfig(eps=0.0)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(60)} | {"<pad>": 60, "<eos>": 61}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def one_step_lora_weights(tmp_path, batch, accumulation, beta, max_steps=1):
    from datasets import Dataset
    from trl import SFTConfig

    from safelora.training.ortho_reg import OrthoSFTTrainer

    model, _ = tiny_peft_model(MLP, init_lora_weights=False)  # B != 0: the penalty has a gradient
    texts = [" ".join(f"w{(7 * i + j) % 60}" for j in range(12)) for i in range(8)]
    args = SFTConfig(
        output_dir=str(tmp_path / f"out-{batch}-{accumulation}-{beta}"),
        max_steps=max_steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    trainer = OrthoSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tiny_tokenizer(),
        ortho=OrthoRegConfig(mode="both", rank=8, beta=beta, reduction="mean"),
    )
    trainer.train()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return weights, trainer


def test_trainer_logs_penalty_and_counts_it_once_per_optimizer_step(tmp_path):
    # One SGD step from the same start: the update is -lr·(g_lm + g_penalty), so the difference
    # between β = 50 and β = 0 isolates the penalty's gradient, which must not depend on how the
    # batch is split into micro-batches (counted once per optimizer step, not once per micro-batch).
    def penalty_update(batch, accumulation):
        with_penalty, trainer = one_step_lora_weights(tmp_path, batch, accumulation, beta=50.0)
        without, _ = one_step_lora_weights(tmp_path, batch, accumulation, beta=0.0)
        return {n: with_penalty[n] - without[n] for n in with_penalty}, trainer

    whole, trainer = penalty_update(batch=4, accumulation=1)
    split, _ = penalty_update(batch=2, accumulation=2)
    logged = [h["ortho_penalty"] for h in trainer.state.log_history if "ortho_penalty" in h]
    assert len(logged) == 1 and logged[0] > 0
    largest = max(d.abs().max().item() for d in whole.values())
    assert largest > 1e-2
    # float32 sums the micro-batches in another order (differences ~1e-5 on some CPUs); a penalty
    # counted per micro-batch would differ by about half the update, ~1e3 times this tolerance
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=1e-3 * largest)
