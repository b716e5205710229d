"""Prompt methods beyond the matrix: training, generation, init from text, loading, errors."""

from __future__ import annotations

import peft
import pytest
import torch
from models import MODELS, logits, twin
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from peft_core import (
    MultitaskPromptTuningConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from peft_core.prompt_learning import DirectPrompt

CONFIGS = {
    "prompt_tuning": lambda task: PromptTuningConfig(task_type=task, num_virtual_tokens=4),
    "p_tuning": lambda task: PromptEncoderConfig(task_type=task, num_virtual_tokens=4, encoder_hidden_size=16),
    "prefix_tuning": lambda task: PrefixTuningConfig(task_type=task, num_virtual_tokens=4),
    "prefix_projection": lambda task: PrefixTuningConfig(task_type=task, num_virtual_tokens=4, prefix_projection=True),
    "multitask": lambda task: MultitaskPromptTuningConfig(task_type=task, num_virtual_tokens=4, num_tasks=2),
}
TASK_IDS = torch.tensor([0, 1])


def extra(method: str) -> dict:
    return {"task_ids": TASK_IDS} if method == "multitask" else {}


def train(model, batch: dict, steps: int = 25, lr: float = 3e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("model_name", ["llama", "t5", "bert"])
def test_every_prompt_method_trains(model_name, method):
    tiny = MODELS[model_name]
    torch.manual_seed(0)
    model = get_peft_model(tiny.fresh(), CONFIGS[method](tiny.task_type))
    ids = tiny.inputs()["input_ids"]
    # a target the tokens alone can reach: always answer token 7 (or class 0 / 2)
    labels = {"llama": torch.full_like(ids, 7), "t5": torch.full((2, 4), 7), "bert": torch.tensor([0, 2])}[model_name]
    batch = {"input_ids": ids, "labels": labels, **extra(method)}
    before = eval_loss(model, batch)
    train(model, batch)
    # a random tiny model caps how far its tokens alone can move the loss; the drop must be clear
    assert eval_loss(model, batch) < before - 0.1


def eval_loss(model, batch: dict) -> float:
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def greedy(model, ids: torch.Tensor, steps: int, **kwargs) -> torch.Tensor:
    """Greedy decoding by repeated full forward passes: the reference for generate()."""
    with torch.no_grad():
        for _ in range(steps):
            next_id = model(input_ids=ids, **kwargs).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    return ids


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_causal_generate_matches_greedy_forward_after_training(model_name, method):
    tiny = MODELS[model_name]
    torch.manual_seed(0)
    model = get_peft_model(tiny.fresh(), CONFIGS[method]("CAUSAL_LM"))
    ids = tiny.inputs()["input_ids"]
    train(model, {"input_ids": ids, "labels": ids, **extra(method)}, steps=10)
    model.eval()
    prompt = ids[:, :4]
    with torch.no_grad():
        out = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, **extra(method),
                             output_scores=True, return_dict_in_generate=True)
        reference = model(input_ids=prompt, **extra(method)).logits[:, -1]
        with model.disable_adapter():
            plain = model.generate(input_ids=prompt, max_new_tokens=1, do_sample=False, pad_token_id=0,
                                   output_scores=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, greedy(model, prompt, 4, **extra(method)))
    torch.testing.assert_close(out.scores[0], reference, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out.scores[0], plain.scores[0], atol=1e-3), "the adapter must shape generation"


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_seq2seq_generate_matches_greedy_forward(method):
    tiny = MODELS["t5"]
    torch.manual_seed(0)
    model = get_peft_model(tiny.fresh(), CONFIGS[method]("SEQ_2_SEQ_LM"))
    ids = tiny.inputs()["input_ids"]
    train(model, {"input_ids": ids, "labels": ids[:, :4].clone()}, steps=10)
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
        decoder = torch.zeros(2, 1, dtype=torch.long)  # decoder_start_token_id
        for _ in range(4):
            step = model(input_ids=ids, decoder_input_ids=decoder).logits[:, -1].argmax(-1, keepdim=True)
            decoder = torch.cat([decoder, step], dim=1)
    assert torch.equal(out, decoder)


def test_left_padded_batch_generates_like_single_rows():
    tiny = MODELS["llama"]
    torch.manual_seed(0)
    model = get_peft_model(tiny.fresh(), CONFIGS["prefix_tuning"]("CAUSAL_LM")).eval()
    long, short = torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10]])
    batch = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        both = model.generate(input_ids=batch, attention_mask=mask, **kwargs)
        assert torch.equal(both[0], model.generate(input_ids=long, **kwargs)[0])
        assert torch.equal(both[1, 2:], model.generate(input_ids=short, **kwargs)[0])


def test_multitask_prompt_on_t5_interops_with_peft(tmp_path):
    tiny = MODELS["t5"]
    base = tiny.fresh()
    reference = twin(base)
    config = MultitaskPromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, num_tasks=2, num_ranks=2)
    ours = get_peft_model(base, config).eval()
    with torch.no_grad():
        ours.base_model.prompt_encoder["default"].prefix_task_cols.normal_()
    batch = {"input_ids": tiny.inputs()["input_ids"], "labels": tiny.inputs()["decoder_input_ids"], "task_ids": TASK_IDS}
    expected = logits(ours, batch)
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(reference, str(tmp_path)).eval()
    torch.testing.assert_close(logits(theirs, batch), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A small word-level tokenizer trained on the spot (no Hub here)."""
    words = ["classify", "the", "sentiment", "of", "this", "review", "good", "bad", "movie"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)] * 3, trainers.WordLevelTrainer(special_tokens=["[UNK]"], vocab_size=50))
    path = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return str(path)


def test_text_init_starts_from_the_texts_embeddings(tokenizer_dir):
    tiny = MODELS["llama"]
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init="TEXT",
                                prompt_tuning_init_text="classify the sentiment", tokenizer_name_or_path=tokenizer_dir)
    model = get_peft_model(tiny.fresh(), config)
    ids = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)("classify the sentiment", add_special_tokens=False)["input_ids"]
    rows = (ids * 2)[:5]  # the text's tokens repeated to fill the virtual tokens
    expected = model.get_base_model().get_input_embeddings().weight[rows]
    assert torch.equal(model.base_model.prompt_encoder["default"].embedding, expected)


def test_text_init_needs_its_text():
    with pytest.raises(ValueError, match="TEXT needs prompt_tuning_init_text and tokenizer_name_or_path"):
        PromptTuningConfig(prompt_tuning_init="TEXT")
    with pytest.raises(ValueError, match="prompt_tuning_init must be one of RANDOM, TEXT, SAMPLE_VOCAB"):
        PromptTuningConfig(prompt_tuning_init="ZEROS")


def test_p_tuning_loaded_from_a_file_keeps_training_its_tokens(tmp_path):
    tiny = MODELS["llama"]
    torch.manual_seed(0)
    model = get_peft_model(tiny.fresh(), CONFIGS["p_tuning"]("CAUSAL_LM")).eval()
    expected = logits(model, tiny.inputs())
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(tiny.fresh(), tmp_path, is_trainable=True)
    encoder = again.base_model.prompt_encoder["default"]
    assert isinstance(encoder, DirectPrompt) and encoder.embedding.requires_grad
    assert torch.equal(logits(again.eval(), tiny.inputs()), expected)


def test_multitask_needs_task_ids_and_tasks_differ():
    tiny = MODELS["llama"]
    model = get_peft_model(tiny.fresh(), CONFIGS["multitask"]("CAUSAL_LM")).eval()
    with pytest.raises(ValueError, match="needs task_ids"):
        model(**tiny.inputs())
    with pytest.raises(ValueError, match=r"task_ids must lie in 0..1"):
        model(**tiny.inputs(), task_ids=torch.tensor([0, 2]))
    with torch.no_grad():
        model.base_model.prompt_encoder["default"].prefix_task_rows[1].mul_(3.0)
    out = logits(model, {**tiny.inputs(), "task_ids": torch.tensor([0, 0])})
    other = logits(model, {**tiny.inputs(), "task_ids": torch.tensor([0, 1])})
    assert torch.equal(out[0], other[0]) and not torch.allclose(out[1], other[1])


@pytest.mark.parametrize("init", ["EXACT_SOURCE_TASK", "AVERAGE_SOURCE_TASKS", "ONLY_SOURCE_SHARED"])
def test_multitask_transfers_from_source_tasks(tmp_path, init):
    tiny = MODELS["llama"]
    torch.manual_seed(0)
    source = get_peft_model(tiny.fresh(), MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                                                       num_tasks=3, num_ranks=2))
    encoder = source.base_model.prompt_encoder["default"]
    with torch.no_grad():
        encoder.prefix_task_cols.normal_()
        encoder.prefix_task_rows.normal_()
    source.save_pretrained(tmp_path)
    config = MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, num_tasks=1, num_ranks=2,
                                         prompt_tuning_init=init, prompt_tuning_init_task=2,
                                         prompt_tuning_init_state_dict_path=str(tmp_path / "adapter_model.safetensors"))
    target = get_peft_model(tiny.fresh(), config).base_model.prompt_encoder["default"]
    assert torch.equal(target.embedding, encoder.embedding)
    cols = {"EXACT_SOURCE_TASK": encoder.prefix_task_cols[2], "AVERAGE_SOURCE_TASKS": encoder.prefix_task_cols.mean(0),
            "ONLY_SOURCE_SHARED": torch.ones(4, 2)}[init]
    torch.testing.assert_close(target.prefix_task_cols[0], cols)


def test_prompt_adapters_switch_but_never_stack():
    tiny = MODELS["llama"]
    model = get_peft_model(tiny.fresh(), CONFIGS["prompt_tuning"]("CAUSAL_LM")).eval()
    first = logits(model, tiny.inputs())
    model.add_adapter("other", CONFIGS["prompt_tuning"]("CAUSAL_LM"))
    assert torch.equal(logits(model, tiny.inputs()), first)
    model.set_adapter("other")
    assert not torch.allclose(logits(model, tiny.inputs()), first)
    with pytest.raises(ValueError, match="prompt adapters cannot be active together"):
        model.set_adapter(["default", "other"])


def test_prefix_tuning_refuses_gradient_checkpointing():
    tiny = MODELS["llama"]
    base = tiny.fresh()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(base, CONFIGS["prefix_tuning"]("CAUSAL_LM"))
    ids = tiny.inputs()["input_ids"]
    with pytest.raises(ValueError, match="prefix tuning cannot train with gradient checkpointing"):
        train(model, {"input_ids": ids, "labels": ids}, steps=1)
    model.eval()  # inference is unaffected
    assert logits(model, tiny.inputs()).shape == (2, 7, 100)


def test_methods_refuse_tasks_they_do_not_fit():
    with pytest.raises(ValueError, match="Prefix tuning does not fit task IMAGE_CLS; it fits: CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS"):
        get_peft_model(MODELS["vit"].fresh(), PrefixTuningConfig(task_type="IMAGE_CLS"))
    with pytest.raises(ValueError, match="Prompt tuning needs a task_type"):
        get_peft_model(MODELS["llama"].fresh(), PromptTuningConfig())


def test_prefix_tuning_needs_attention_that_takes_a_cache():
    with pytest.raises(ValueError, match="prefix tuning needs a model whose attention takes past_key_values"):
        get_peft_model(MODELS["vit"].fresh(), PrefixTuningConfig(task_type="SEQ_CLS"))


@pytest.mark.parametrize("bad", [{"num_virtual_tokens": 0}, {"num_virtual_tokens": 2.5}])
def test_bad_prompt_configs(bad):
    with pytest.raises(ValueError, match="num_virtual_tokens must be a positive whole number"):
        PromptTuningConfig(**bad)
    with pytest.raises(ValueError, match="encoder_reparameterization_type must be MLP or LSTM"):
        PromptEncoderConfig(encoder_reparameterization_type="GRU")
