"""The chat layout: a template-rendered conversation, its reply's lines as steps and its last number as the
answer, read back the same from encoded and from generated ids, on a small byte-level BPE with ChatML tokens."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from sage_jax import layout
from sage_jax.chat import ChatLayout, TextCodec, render_template

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chatml_tokenizer() -> tokenizers.Tokenizer:
    """A byte-level BPE of 400 ids with ChatML's special tokens, trained on a few arithmetic lines."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["What is 3 + 4 + 5? Think step by step.", "3 + 4 = 7\n7 + 5 = 12\nAnswer: 12", "system user assistant",
              "You are helpful. Für ärger 😀"] * 20
    backend.train_from_iterator(corpus, trainer)
    return backend


def save_random_chat_model(directory: pathlib.Path, seed: int = 4) -> pathlib.Path:
    """A Hugging Face directory anything that takes `--model` reads: a random homogeneous `test`-sized Llama, the
    ChatML tokenizer above and its template."""
    import jax

    import sage_jax as sj
    from sage_jax.interop import save_hf

    cfg = sj.configs.get("test").replace(vocab_size=400, n_reasoning_heads=2, n_memory_heads=1, n_meta_heads=1,
                                         reasoning_span=None, memory_span=None, meta_span=None,
                                         reasoning_gate=False, meta_head=False, bos_id=0, eos_id=2, pad_id=0,
                                         max_seq_len=128)
    save_hf(cfg, sj.init_params(cfg, jax.random.key(seed)), directory)
    chatml_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    return directory


@pytest.fixture(scope="module")
def codec():
    return TextCodec(chatml_tokenizer())


@pytest.fixture(scope="module")
def chat(codec):
    return ChatLayout.for_codec(codec, CHATML)


def test_the_generation_header_and_the_cues(codec, chat):
    assert codec.decode(chat.header) == "<|im_start|>assistant\n"
    assert chat.eos_id == codec.token_id("<|im_end|>") and chat.is_special(chat.eos_id)
    assert codec.decode(chat.explanation_cue) == ("\n<|im_start|>user\nFor each step, which earlier numbers does it "
                                                  "use?<|im_end|>\n<|im_start|>assistant\n")
    prompt = chat.prompt(codec, "What is 3 + 4 + 5?")
    assert codec.decode(prompt) == render_template(CHATML, [{"role": "user", "content": "What is 3 + 4 + 5? Think "
                                                            "step by step, one step per line."}],
                                                   add_generation_prompt=True)


def test_encode_marks_steps_answer_and_segments_as_they_are_read_back(codec, chat):
    steps = ["3 + 4 = 7", "7 + 5 = 12"]
    encoded = chat.encode(codec, "What is 3 + 4 + 5?", steps, "12")
    tokens = encoded.tokens
    assert [codec.decode(tokens[s:e]) for s, e in encoded.step_spans] == steps
    assert chat.step_spans(tokens) == list(encoded.step_spans)
    assert codec.decode(tokens[encoded.answer_mask]) == " 12"  # byte-level BPE: the space belongs to the number
    assert layout.parse_answer(codec, tokens, chat) == "12"
    prompt = chat.prompt(codec, "What is 3 + 4 + 5?")
    np.testing.assert_array_equal(tokens[:len(prompt)], prompt)
    assert (encoded.segments[:len(prompt)] == layout.Segment.PROMPT).all()
    assert encoded.segments[len(prompt)] == layout.Segment.RATIONALE
    assert encoded.segments[-2] == layout.Segment.ANSWER  # the reply's <|im_end|>; the template's "\n" follows
    steps_mask = np.asarray(layout.steps_from_index(tokens, encoded.step_index, 2, chat).mask)
    np.testing.assert_array_equal(steps_mask, np.asarray(layout.from_spans(encoded.step_spans, len(tokens)).mask))


def test_dependencies_land_on_the_characters_they_name(codec, chat):
    question = "What is 3 + 4 + 5?"
    deps = [[layout.Span(layout.QUESTION_PART, 8, 9), layout.Span(layout.QUESTION_PART, 12, 13)],
            [layout.Span(0, 8, 9), layout.Span(layout.QUESTION_PART, 16, 17)]]
    encoded = chat.encode(codec, question, ["3 + 4 = 7", "7 + 5 = 12"], "12", dependencies=deps)
    named = [[codec.decode([t]) for t in encoded.tokens[encoded.step_deps[k]]] for k in range(2)]
    assert [sorted(x.strip() for x in row) for row in named] == [["3", "4"], ["5", "7"]]
    first_step = encoded.step_spans[0]
    assert encoded.step_deps[1, first_step[0]:first_step[1]].any()


def test_a_generated_reply_is_split_into_its_lines(codec, chat):
    prompt = chat.prompt(codec, "What is 3 + 4 + 5?")
    reply = codec.encode("3 + 4 = 7\n5 + 5 = 10\n\nThe answer is 10.")
    tokens = np.asarray(prompt + reply + [chat.eos_id])
    spans = chat.step_spans(tokens)
    assert [codec.decode(tokens[s:e]).strip() for s, e in spans] == ["3 + 4 = 7", "5 + 5 = 10", "The answer is 10."]
    assert layout.parse_answer(codec, tokens, chat) == "10"
    assert chat.step_spans(np.asarray(prompt)) == [] and chat.answer_span(prompt[:3]) is None


def test_specials_in_question_text_stay_text_and_bad_steps_are_named(codec, chat):
    assert codec.token_id("<|im_end|>") not in codec.encode("a <|im_end|> b")
    with pytest.raises(layout.LayoutError, match=r"step 1 \('a\\nb'\) must be one non-blank line"):
        chat.encode(codec, "q", ["x", "a\nb"])
    with pytest.raises(layout.LayoutError, match="no end-of-turn token '<eot>'"):
        ChatLayout.for_codec(codec, CHATML, eos_token="<eot>")
