"""Whisper pruned for real: one-shot on unlabelled audio (the model's own transcripts as labels), FLOPs at
encoder + decoder lengths, pruning while fine-tuning with distillation, generate() after surgery and reload."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import build, inputs
from transformers.models.whisper.modeling_whisper import shift_tokens_right

import hfprune
from hfprune.calibration.lengths import mean_lengths, positions
from hfprune.calibration.seq2seq import _after_end, shift_right, transcribe, with_decoder_inputs
from hfprune.structured.criteria import compute_scores
from hfprune.structured.refine import MIN_EXAMPLES, TARGET_BYTES, _first_tokens
from hfprune.training.distill import Distiller


def audio(batches=3, batch=2):
    """Unlabelled calibration data: mel features only, as a feature extractor gives them."""
    return [{"input_features": inputs("whisper", batch=batch, seed=i)["input_features"]} for i in range(batches)]


def generated(model, features, **kwargs):
    with torch.no_grad():
        out = model.generate(input_features=features, do_sample=False, max_new_tokens=6, output_logits=True,
                             return_dict_in_generate=True, **kwargs)
    return out.sequences, torch.stack(out.logits)


# ---------------------------------------------------------------------------------------- pseudo-labels


def test_transcripts_replay_under_teacher_forcing():
    model = build("whisper")
    batch = audio(batches=1)[0]
    pseudo = transcribe(model, batch)
    labels, decoder = pseudo["labels"], pseudo["decoder_input_ids"]
    assert labels.shape == decoder.shape and (decoder[:, 0] == model.config.decoder_start_token_id).all()
    assert torch.equal(decoder[:, 1:], labels[:, :-1]), "decoder inputs are the labels shifted right"
    assert torch.equal(shift_right(model, labels), decoder)
    assert torch.equal(shift_tokens_right(labels, 0, 1), decoder), "as Whisper derives them from labels itself"
    with torch.no_grad():
        output = model(**batch, **pseudo)
    assert torch.equal(output.logits.argmax(-1), labels), "greedy transcript = argmax of the teacher-forced pass"
    assert torch.isfinite(output.loss)


def test_transcripts_keep_prompt_tokens_and_stop_at_the_end_token():
    model = build("whisper")
    model.generation_config.no_timestamps_token_id = 50  # a prompt token Whisper forces after the start token
    token = int(transcribe(model, audio(batches=1)[0])["labels"][0, 1])
    model.generation_config.eos_token_id = token  # the first generated token now ends the transcript
    pseudo = transcribe(model, audio(batches=1)[0])
    assert (pseudo["labels"][:, 0] == 50).all(), "teacher forcing replays the prompt the model decoded under"
    assert (pseudo["labels"][:, 1] == token).all(), "the end token is a label"
    assert (pseudo["labels"][:, 2:] == -100).all(), "nothing after the end token is"


def test_positions_after_the_end_token():
    tokens = torch.tensor([[5, 2, 0, 0], [5, 5, 5, 2], [2, 2, 7, 7]])
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(_after_end(tokens, 2), expected)
    assert torch.equal(_after_end(tokens, [2, 9]), expected)
    assert not _after_end(tokens, None).any()


def test_labelled_batches_get_decoder_inputs_and_others_are_left_alone():
    model = build("whisper")
    labels = torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])
    labelled = {"input_features": audio(1)[0]["input_features"], "labels": labels}
    with_ids = inputs("whisper")
    prepared = with_decoder_inputs(model, [labelled, with_ids])
    assert torch.equal(prepared[0]["decoder_input_ids"], torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]]))
    assert torch.equal(prepared[0]["labels"], labels), "real labels are kept"
    assert prepared[1] is with_ids
    bert = build("bert")
    text = [inputs("bert")]
    assert with_decoder_inputs(bert, text) is text, "not an encoder-decoder: nothing to add"


# ------------------------------------------------------------------------------------------------ FLOPs


def test_flops_count_encoder_and_decoder_at_their_lengths():
    model = build("whisper")
    batch = {"input_features": torch.zeros(2, 8, 3000), "labels": torch.tensor([[5, 6, 2, -100], [5, 6, 7, 2]])}
    assert mean_lengths(model, [batch]) == (4, 1500), "decoder: mean transcript length; encoder: after the stem"
    counts = hfprune.count(model, seq_len=4, encoder_seq_len=1500)
    d, head = 32, 8
    cross = counts.sites["decoder.0.cross_attention"]
    assert cross.flops_per_kv_unit == 2 * 2 * 1500 * d * head, "cross-attention K/V over the encoder's frames"
    assert cross.flops_per_unit == 2 * 4 * d * head + 4 * 4 * 1500 * head + 2 * 4 * head * d
    assert counts.sites["decoder.0.ffn"].flops_per_unit == 2 * 4 * d * 2
    assert counts.sites["encoder.0.ffn"].flops_per_unit == 2 * 1500 * d * 2
    assert counts.encoder_seq_len == 1500 and "1500 encoder frames, 4 decoder tokens" in str(counts)
    assert hfprune.count(build("bert"), seq_len=4).encoder_seq_len is None


def test_mask_tuning_data_is_capped_in_positions_not_batches():
    model = build("whisper")
    utterance = {"input_features": torch.zeros(1, 8, 3000), "labels": torch.tensor([[5, 6, 2, -100]])}
    assert positions(model, utterance) == 1500 + 3
    assert len(_first_tokens(model, [utterance] * 20, 8192, examples=0)) == 6, "30 s utterances: 1503 positions each"
    # Positions of one utterance are not independent: the fits take MIN_EXAMPLES utterances when there are...
    assert len(_first_tokens(model, [utterance] * 200, 8192)) == MIN_EXAMPLES
    # ... unless the dense targets of every site would pass the memory cap first.
    cap = TARGET_BYTES // (4 * model.config.d_model * 500)
    assert len(_first_tokens(model, [utterance] * 200, 8192, sites=500)) == -(-cap // 1503)


# -------------------------------------------------------------------------------------------- one-shot


def test_activation_scores_leave_the_padding_after_a_transcript_out():
    model = build("whisper")
    batch = {**audio(1)[0], "labels": torch.tensor([[5, 6, 2, -100, -100], [7, 8, 9, 10, 2]])}
    batch = with_decoder_inputs(model, [batch])[0]
    other = {**batch, "decoder_input_ids": batch["decoder_input_ids"].clone()}
    other["decoder_input_ids"][0, 4] = 77  # a position whose label is -100: padding
    first, second = (compute_scores(model, "activation", [b]) for b in (batch, other))
    for name in first.neurons:
        assert torch.allclose(first.neurons[name], second.neurons[name], atol=1e-6), name
    for name in first.heads:
        assert torch.allclose(first.heads[name], second.heads[name], atol=1e-6), name


@pytest.mark.parametrize("criterion", ["fisher", "taylor", "activation"])
def test_oneshot_on_unlabelled_audio_meets_the_budget_and_generates(criterion, tmp_path):
    model = build("whisper")
    recipe = hfprune.Recipe.load("recipes/whisper-oneshot-fisher.yaml")
    recipe.criterion, recipe.round_neurons, recipe.min_heads = criterion, 4, 0
    recipe.rearrange = recipe.tune = True  # off in the shipped recipe (measured no better), exercised here
    recipe.reconstruct = False  # the shipped recipe's refit, which would take the place of mask tuning
    recipe.sites, recipe.target = ["*"], {"flops": 0.6}  # every kind of site, the encoder's heads too
    report = hfprune.prune(model, recipe, calibration=audio())
    assert 0.45 < report.flops_kept <= 0.6 + 1e-9
    transcript = transcribe(build("whisper"), audio(1)[0])["labels"]
    assert report.before.seq_len == round(float(transcript.ne(-100).sum(-1).float().mean()))
    assert report.before.encoder_seq_len == 16
    assert report.after.flops == hfprune.count(model, report.before.seq_len, 16).flops
    assert "mask tuning" in report.quality
    if criterion != "activation":
        assert any(step.startswith("rearrangement") for step in report.quality), "gradient criteria rearrange"
    kinds = {name.rsplit(".", 1)[1] for name, (before, after) in report.kept_per_site().items() if after < before}
    if criterion != "fisher":  # each kind spends its share of the budget; Fisher may keep one kind whole
        assert kinds == {"attention", "cross_attention", "ffn"}, "every kind of site was pruned"

    features = audio(1)[0]["input_features"]
    tokens, logits = generated(model, features)
    assert torch.isfinite(logits).all()
    hfprune.save_pretrained(model, tmp_path)
    reloaded = hfprune.from_pretrained(tmp_path)
    again, again_logits = generated(reloaded, features)
    assert torch.equal(tokens, again) and torch.allclose(logits, again_logits, atol=1e-5)


def test_gradient_scores_reach_every_kind_of_site_from_unlabelled_audio():
    scores = compute_scores(build("whisper"), "fisher", audio())
    assert set(scores.heads) == {n for n, k in hfprune.sites(build("whisper")).items() if k != "ffn"}
    assert all(float(s.sum()) > 0 for s in [*scores.heads.values(), *scores.neurons.values()])
    assert all(g.shape[0] == 6 for g in scores.head_grads.values()), "one gradient per example, for rearrangement"


def test_shipped_oneshot_recipe_runs_as_is():
    model = build("whisper")
    report = hfprune.prune(model, hfprune.Recipe.load("recipes/whisper-oneshot-fisher.yaml"), calibration=audio())
    assert report.flops_kept <= 0.9 + 1e-9
    assert all(after >= 1 for name, (_, after) in report.kept_per_site().items() if not name.endswith("ffn"))
    kept = report.kept_per_site()
    assert all(kept[n][0] == kept[n][1] for n in kept if n.startswith("encoder.") and n.endswith(".attention"))


def test_oneshot_is_deterministic():
    recipe = hfprune.Recipe(target={"flops": 0.5}, criterion="fisher", round_neurons=4, sites=["*"])
    kept = []
    for _ in range(2):
        model = build("whisper")
        kept.append(hfprune.prune(model, recipe, calibration=audio()).kept_per_site())
    assert kept[0] == kept[1]


# ---------------------------------------------------------------------------------------------- errors


def test_batches_without_features_are_refused():
    model = build("whisper")
    with pytest.raises(hfprune.CalibrationError, match="batch 1 has no 'input_features'.*feature extractor"):
        hfprune.prune(model, hfprune.Recipe(criterion="fisher"), [audio(1)[0], {"audio": torch.zeros(2, 100)}])
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_empty_audio_is_refused():
    model = build("whisper")
    with pytest.raises(hfprune.CalibrationError, match="batch 0: 'input_features' is empty"):
        hfprune.prune(model, hfprune.Recipe(criterion="activation"), [{"input_features": torch.zeros(2, 8, 0)}])


# --------------------------------------------------------------------------------------- distillation


def test_distillation_leaves_padding_out():
    model = build("whisper").train()
    distiller = Distiller(model, {"alpha": 1.0, "temperature": 2.0})
    distiller._labels = torch.tensor([[5, 6, -100, -100], [5, 6, 7, 2]])
    generator = torch.Generator().manual_seed(0)
    teacher, student = (torch.randn(2, 4, 99, generator=generator) for _ in range(2))
    term = distiller._distillation_term(student, teacher)
    noisy = student.clone()
    noisy[0, 2:] += 100 * torch.randn(2, 99, generator=generator)
    assert torch.allclose(distiller._distillation_term(noisy, teacher), term), "padding positions do not count"
    pointwise = torch.nn.functional.kl_div((student / 2).log_softmax(-1), (teacher / 2).log_softmax(-1),
                                           log_target=True, reduction="none").sum(-1)
    labelled = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.allclose(term, pointwise[labelled].mean() * 4), "mean per labelled decoder token, times T^2"
    distiller.detach()


def test_hidden_state_distillation_covers_encoder_and_decoder():
    model = build("whisper").train()
    distiller = Distiller(model, {"alpha": 0.5, "hidden": 1.0})
    batch = {**audio(1)[0], "labels": torch.tensor([[5, 6, 2, -100], [7, 8, 9, 2]])}
    loss = model(**batch).loss
    with torch.no_grad():
        model.eval()
        task = model(**batch).loss
    assert loss.requires_grad and torch.isfinite(loss)
    assert torch.allclose(loss, 0.5 * task, atol=1e-5), "student = teacher: no KL, no hidden-state error yet"
    distiller.detach()


def test_hidden_state_distillation_leaves_decoder_padding_out():
    model = build("whisper").train()  # the tiny Whisper has no dropout
    distiller = Distiller(model, {"alpha": 0.5, "hidden": 1.0})
    with torch.no_grad():  # a student that differs from its teacher, at padded decoder positions too
        generator = torch.Generator().manual_seed(3)
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    features = audio(1)[0]["input_features"]
    labels = torch.tensor([[5, 6, 2, -100], [7, 8, 9, 2]])
    loss = model(input_features=features, labels=labels).loss
    # More -100 on the right: the causal decoder's real states are unchanged, and the decoder's hidden-state
    # term, like the KL and the task loss, averages over labelled tokens only (encoder frames all count).
    padded = torch.cat([labels, torch.full((2, 3), -100)], 1)
    assert torch.allclose(model(input_features=features, labels=padded).loss, loss, rtol=1e-5)
    distiller.detach()


# ------------------------------------------------------------------------------------------- callback


class RandomSpeech(torch.utils.data.Dataset):
    """Random mel features with random transcripts of varying length, padded with -100."""

    def __init__(self, size=16, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.features = torch.randn(size, 8, 32, generator=generator)
        self.labels = torch.randint(3, 99, (size, 8), generator=generator)
        lengths = torch.randint(3, 8, (size,), generator=generator)
        for row, length in enumerate(lengths):
            self.labels[row, length - 1] = 2  # the end token
            self.labels[row, length:] = -100

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return {"input_features": self.features[index], "labels": self.labels[index]}


def test_pruning_while_fine_tuning_with_a_teacher(tmp_path):
    model = build("whisper")
    dense = build("whisper")
    recipe = hfprune.Recipe.load("recipes/whisper-gradual-fisher.yaml")
    recipe.schedule, recipe.round_neurons, recipe.min_heads = {"type": "cubic", "start": 2, "end": 6, "every": 2}, 4, 0
    recipe.encoder_seq_len, recipe.seq_len = 16, 6
    args = transformers.Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=8, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=2, save_strategy="no", report_to=[], use_cpu=True,
    )
    features = RandomSpeech(size=2, seed=1).features
    masked = {}

    class Spy(transformers.TrainerCallback):
        """What the gated model generates after the last step, before the callback's surgery."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == state.max_steps:
                model.eval()
                masked["tokens"], masked["logits"] = generated(model, features)
                model.train()

    callback = hfprune.PruningCallback(recipe)
    trainer = transformers.Seq2SeqTrainer(model=model, args=args, train_dataset=RandomSpeech(),
                                          callbacks=[callback, Spy()])
    trainer.train()

    kept = hfprune.count(model, seq_len=6, encoder_seq_len=16).flops / hfprune.count(dense, 6, 16).flops
    assert 0.35 < kept <= 0.5 + 1e-9
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules()), "no hooks after training"
    model.eval()
    tokens, logits = generated(model, features)
    assert torch.equal(tokens, masked["tokens"]), "surgery generates what the gated model generated"
    assert torch.allclose(logits, masked["logits"], atol=1e-5)
    model.save_pretrained(tmp_path / "saved")
    reloaded = hfprune.from_pretrained(tmp_path / "saved")
    again, again_logits = generated(reloaded, features)
    assert torch.equal(tokens, again) and torch.allclose(logits, again_logits, atol=1e-5)


# ---------------------------------------------------------------------------------------- which structures


def test_sites_patterns_prune_only_the_structure_they_name():
    model = build("whisper")
    before = {n: s.units for n, s in hfprune.count(model, seq_len=8, encoder_seq_len=16).sites.items()}
    total = sum(u for n, u in before.items() if n.startswith("decoder.") and n.endswith(".ffn"))
    recipe = hfprune.Recipe(target={"neurons": total // 2}, structures=["neurons"], sites=["decoder.*.ffn"],
                            round_neurons=1, reconstruct=False, tune=False, rearrange=False)
    hfprune.prune(model, recipe, calibration=audio())
    after = {n: s.units for n, s in hfprune.count(model, seq_len=8, encoder_seq_len=16).sites.items()}
    changed = {n for n in before if after[n] != before[n]}
    assert changed and all(n.startswith("decoder.") and n.endswith(".ffn") for n in changed)
    assert sum(u for n, u in after.items() if n.startswith("decoder.") and n.endswith(".ffn")) == total // 2
    assert recipe.selects("decoder.3.ffn") and not recipe.selects("encoder.0.ffn")
    assert hfprune.Recipe(sites=["encoder"]).selects("encoder.1.attention"), "a plain name is still a prefix"


def test_layer_pruning_keeps_to_the_stacks_named_in_sites():
    model = build("whisper")
    layers = model.config.decoder_layers
    recipe = hfprune.Recipe(target={"flops": 0.95}, structures=["layers"], sites=["decoder"])
    hfprune.prune(model, recipe, calibration=audio())
    assert model.config.encoder_layers == build("whisper").config.encoder_layers
    assert model.config.decoder_layers < layers
    with pytest.raises(hfprune.RecipeError, match=r"removing whole layers of \['decoder'\]: every stack keeps"):
        hfprune.prune(build("whisper"), hfprune.Recipe(target={"flops": 0.3}, structures=["layers"],
                                                       sites=["decoder"]), calibration=audio())


def test_a_budget_that_removes_every_cross_attention_head_is_refused():
    recipe = hfprune.Recipe(target={"heads": 0}, structures=["heads"], sites=["decoder.*.cross_attention"],
                            reconstruct=False, tune=False, rearrange=False)
    with pytest.raises(hfprune.RecipeError, match="every cross-attention head"):
        hfprune.prune(build("whisper"), recipe, calibration=audio())


def test_a_budget_alone_uses_what_whisper_measurably_survives_one_shot():
    model = build("whisper")
    encoder_heads = {n: s.units for n, s in hfprune.count(model, seq_len=8).sites.items()
                     if n.startswith("encoder.") and n.endswith(".attention")}
    report = hfprune.prune(model, hfprune.Recipe(target={"flops": 0.8}, round_neurons=1), calibration=audio())
    after = hfprune.count(model, seq_len=8).sites
    assert all(after[n].units == units for n, units in encoder_heads.items()), "the encoder's heads stay one-shot"
    assert report.recipe.sites == ["encoder.*.ffn", "decoder.*.cross_attention"]
    assert (report.recipe.rearrange, report.recipe.tune, report.recipe.reconstruct) == (False, False, True)
    assert "weight reconstruction" in report.times and "mask tuning" not in report.times
    # What a recipe says is done: every site, and no reconstruction, when asked for.
    model = build("whisper")
    asked = hfprune.Recipe(target={"flops": 0.8}, sites=["*"], reconstruct=False, round_neurons=1)
    report = hfprune.prune(model, asked, calibration=audio())
    assert report.recipe.sites == ["*"] and report.recipe.reconstruct is False
    assert "weight reconstruction" not in report.times
    # Other families keep the library's defaults.
    assert hfprune.prune(build("bert"), hfprune.Recipe(target={"flops": 0.8}), calibration=[
        {k: v for k, v in inputs("bert", batch=4).items()}]).recipe.reconstruct is True


def test_a_budget_past_what_whisper_survives_one_shot_says_how_to_go_further():
    only = r"prunes only \['encoder.\*.ffn', 'decoder.\*.cross_attention'\] unless .*'\*'"
    with pytest.raises(hfprune.RecipeError, match=only):
        hfprune.prune(build("whisper"), hfprune.Recipe(target={"flops": 0.05}), calibration=audio())
