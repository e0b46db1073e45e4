"""Soft prompts in the evaluator (evaluators/softprompt.py): exact, batched, and the two
optimizers' steps (CraFT's CMA-ES, CBBT's perturbation gradient) doing what their knobs say."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from promptclimb.agent.core.errors import PromptclimbError  # noqa: E402
from promptclimb.agent.softsearch import SoftPromptConfig  # noqa: E402

HARD = "a photo of a {}."


@pytest.fixture
def evaluator(tiny_clip_config, tiny_clip_weights, image_folder, torch_threads):
    from promptclimb.evaluators import build_evaluator

    return build_evaluator("imagefolder", 2, 1, tiny_clip_config, weights=str(tiny_clip_weights),
                           data_root=str(image_folder), device="cpu")


def text_of(evaluator, n_tokens=4):
    from promptclimb.evaluators.softprompt import soft_prompt_text

    return soft_prompt_text(evaluator.backbone, evaluator.task.classnames, n_tokens)


def test_open_clip_soft_prompt_of_a_photo_of_a_is_the_hard_template(evaluator):
    text = text_of(evaluator)
    context = text.context_of("a photo of a")
    soft = text.class_features(context[None])[0]
    hard = evaluator.class_embeddings([HARD])
    assert soft.shape == hard.shape
    assert (soft - hard).abs().max() < 1e-5
    assert text.nearest_tokens(context) == ["a", "photo", "of", "a"]
    # another text of four tokens is another prompt: the vectors are what is scored
    other = text.class_features(text.context_of("a drawing of the")[None])[0]
    assert (other - evaluator.class_embeddings(["a drawing of the {}."])).abs().max() < 1e-5
    assert (other - hard).abs().max() > 1e-3


def test_demo_soft_prompt_of_a_photo_of_a_is_the_hard_template(torch_threads):
    from promptclimb.evaluators.backbones import load_backbone
    from promptclimb.evaluators.demo.fashion_mnist import CLASSNAMES
    from promptclimb.evaluators.softprompt import soft_prompt_text

    backbone = load_backbone("demo", device="cpu")
    text = soft_prompt_text(backbone, CLASSNAMES, 4)
    contexts = torch.stack([text.context_of("a photo of a"), text.context_of("a picture of the")])
    soft = text.class_features(contexts)  # [2, C, D], class names of 8 to 10 tokens in one call
    for i, template in enumerate(["a photo of a {}.", "a picture of the {}."]):
        hard = backbone.encode_texts([template.format(c) for c in CLASSNAMES])
        assert (soft[i] - hard).abs().max() < 1e-5


def test_a_population_is_scored_in_one_pass_and_equals_one_at_a_time(evaluator, monkeypatch):
    import promptclimb.evaluators.softprompt as softprompt

    text = text_of(evaluator)
    generator = torch.Generator().manual_seed(0)
    population = text.context_of("a photo of a") + 0.05 * torch.randn(12, 4, text.width, generator=generator)
    passes = []
    original = softprompt.encode_token_embeddings
    monkeypatch.setattr(softprompt, "encode_token_embeddings",
                        lambda model, x, tokens: passes.append(len(x)) or original(model, x, tokens))
    together = text.class_features(population)
    assert passes == [12 * 3]  # 12 prompts x 3 classes: one forward pass
    alone = torch.cat([text.class_features(p[None]) for p in population])
    assert (together - alone).abs().max() < 1e-5
    assert together.shape == (12, 3, evaluator.image_features("train")[0].shape[1])


def test_bad_soft_prompt_settings_are_refused_with_a_reason(evaluator, tiny_config_dir, tiny_clip_config):
    from promptclimb.evaluators.backbones import load_backbone
    from promptclimb.evaluators.softprompt import soft_prompt_text

    with pytest.raises(PromptclimbError, match="is not 4 tokens"):
        text_of(evaluator).context_of("a photo")
    with pytest.raises(PromptclimbError, match="must be \\[P, 4, 32\\]"):
        text_of(evaluator).class_features(torch.zeros(2, 3, 32))
    with pytest.warns(UserWarning):  # random weights
        bidirectional = load_backbone("pc-tiny-bidirectional", device="cpu")
    with pytest.raises(PromptclimbError, match="use --optimizer llm"):
        soft_prompt_text(bidirectional, ["a", "b"], 4)
    two = text_of(evaluator, n_tokens=2)  # --prompt-tokens: the context is that many vectors
    assert two.context_of("a photo").shape == (2, 32)


def optimizer(evaluator, **settings):
    from promptclimb.evaluators.softprompt import build_optimizer

    return build_optimizer(evaluator, SoftPromptConfig(**settings).check())


def run_to_end(opt):
    records = [opt.step() for _ in range(opt.total_steps)]
    return records


def test_craft_steps_knobs_and_determinism(evaluator):
    base = dict(optimizer="craft", queries=24, craft_popsize=4, seed=3)
    opt = optimizer(evaluator, **base)
    records = run_to_end(opt)
    assert [r["queries"] for r in records] == [4, 8, 12, 16, 20, 24] and opt.done
    assert records[0]["sigma"] == pytest.approx(0.02)  # --craft-sigma: CMA-ES's initial step size
    again = optimizer(evaluator, **base)
    run_to_end(again)
    assert torch.equal(opt.context(), again.context())  # a fixed seed gives the same prompt
    other_seed = optimizer(evaluator, **{**base, "seed": 4})
    run_to_end(other_seed)
    assert not torch.equal(opt.context(), other_seed.context())

    assert optimizer(evaluator, **base, craft_sigma=0.5).step()["sigma"] == pytest.approx(0.5)
    assert optimizer(evaluator, **base, craft_intrinsic_dim=16).projection.shape == (4 * 32, 16)
    bounded = optimizer(evaluator, **base, craft_bound=0.001)
    z = np.array(bounded.es.ask())  # --craft-bound: every candidate inside the box
    assert np.abs(z).max() <= 0.001 + 1e-12


def test_craft_refinement_learns_at_its_rate_and_the_kl_weight_enters_the_fitness(evaluator):
    base = dict(optimizer="craft", queries=8, craft_popsize=4, seed=1)

    def moved(**settings):
        opt = optimizer(evaluator, **base, **settings)
        before = [p.detach().clone() for p in opt.refinement.parameters()]
        record = opt.step()
        return max(float((p.detach() - b).abs().max()) for p, b in zip(opt.refinement.parameters(), before)), record

    step_small, _ = moved(craft_lr=1e-4)
    step_large, _ = moved(craft_lr=1e-2)
    assert step_small == pytest.approx(1e-4, rel=1e-3) and step_large == pytest.approx(1e-2, rel=1e-3)  # Adam's first step
    # the fitness is cross-entropy + weight x KL; with an untrained (zero) refinement the KL is 0,
    # so the weight shows from the second generation on
    fitness = {}
    for weight in (0.0, 100.0):
        opt = optimizer(evaluator, **base, craft_kl_weight=weight, craft_lr=0.5)
        opt.step()
        fitness[weight] = opt.step()["population"]["fitness_best"]
    assert fitness[100.0] > fitness[0.0]


def test_cbbt_gradient_estimate_points_along_the_true_gradient(evaluator):
    """The zeroth-order estimate from q perturbed prompts against autograd through the same tower."""
    import torch.nn.functional as F

    from promptclimb.evaluators.backbones import encode_token_embeddings

    opt = optimizer(evaluator, optimizer="cbbt", queries=2049, cbbt_directions=2048, seed=0, cbbt_lr=1e-6)
    text = opt.text
    context = opt.p0.clone().requires_grad_(True)
    x = text.fixed.clone()
    x = torch.cat([x[:, :1], context.expand(len(x), -1, -1), x[:, 1 + text.n_tokens:]], dim=1)
    features = F.normalize(encode_token_embeddings(text.backbone.model, x, text.tokens), dim=-1)
    loss = F.cross_entropy(opt.scale * opt.train_x @ features.T, opt.train_y)
    (true,) = torch.autograd.grad(loss, context)
    opt.step()
    estimate = opt.parameter.grad
    cosine = float(F.cosine_similarity(estimate.flatten(), true.flatten(), dim=0))
    assert cosine > 0.9  # 2048 directions in 128 dimensions


def test_cbbt_steps_cost_directions_plus_one_and_move_by_the_learning_rate(evaluator):
    opt = optimizer(evaluator, optimizer="cbbt", queries=20, cbbt_directions=4, cbbt_lr=0.01, seed=0)
    start = opt.context()
    records = run_to_end(opt)
    assert opt.total_steps == 4 and [r["queries"] for r in records] == [5, 10, 15, 20]
    assert records[0]["lr"] == pytest.approx(0.01)
    one = optimizer(evaluator, optimizer="cbbt", queries=5, cbbt_directions=4, cbbt_lr=0.01, seed=0)
    one.step()
    assert float((one.context() - start).abs().max()) == pytest.approx(0.01, rel=1e-3)  # Adam's first step: lr
    with pytest.raises(PromptclimbError, match="buys no cbbt step"):
        SoftPromptConfig(optimizer="cbbt", queries=100, cbbt_directions=256).check()


@pytest.mark.parametrize("name", ["craft", "cbbt"])
def test_a_restored_state_continues_exactly(evaluator, tmp_path, name):
    from promptclimb.evaluators.softprompt import load_state, save_state

    settings = dict(optimizer=name, queries=24, craft_popsize=4, cbbt_directions=3, seed=2)
    straight = optimizer(evaluator, **settings)
    run_to_end(straight)
    first = optimizer(evaluator, **settings)
    for _ in range(3):
        first.step()
    save_state(tmp_path / "state.pt", first)
    np.random.seed(99)  # whatever else uses numpy's global generator meanwhile
    resumed = optimizer(evaluator, **settings)
    assert load_state(tmp_path / "state.pt", resumed) == 3
    while not resumed.done:
        resumed.step()
    assert torch.equal(resumed.context(), straight.context())


def test_settings_are_checked():
    for popsize in (1, 2):  # 2 broke the cma library's update with a traceback
        with pytest.raises(PromptclimbError, match="--craft-popsize must be at least 3"):
            SoftPromptConfig(craft_popsize=popsize).check()
    for sigma in (0, float("inf"), float("nan")):  # inf failed an assert inside cma
        with pytest.raises(PromptclimbError, match="--craft-sigma must be positive and finite"):
            SoftPromptConfig(craft_sigma=sigma).check()
    # a --prompt-init that cannot be the context is refused before any model loads
    with pytest.raises(PromptclimbError, match="has 5 words, more than --prompt-tokens 4"):
        SoftPromptConfig(prompt_init="a photo of a cat").check()
    for bad in ("", "  ", "a {} of a"):
        with pytest.raises(PromptclimbError, match="without braces"):
            SoftPromptConfig(prompt_init=bad).check()
    assert SoftPromptConfig(prompt_init="a photo", prompt_tokens=2).check().prompt_init == "a photo"
    assert replace(SoftPromptConfig(), queries=8000).steps == 200  # CraFT's 8,000 queries = 200 generations of 40
