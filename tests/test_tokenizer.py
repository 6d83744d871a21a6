"""The packaged OpenAI CLIP tokenizer: golden ids, padding, truncation and eos pooling."""

import torch
from transformers import CLIPTokenizer

from clipforge.models.registry import BOS_TOKEN_ID, EOS_TOKEN_ID, VOCAB_SIZE, build
from clipforge.models.tokenizer import get_tokenizer, save_tokenizer, tokenize

CAT = [49406, 320, 1125, 539, 320, 2368, 49407]


def test_golden_ids_with_zero_padding():
    for length in (77, 16):
        ids = tokenize("a photo of a cat", context_length=length)
        assert ids.dtype == torch.long and ids.shape == (1, length)
        assert ids[0].tolist() == CAT + [0] * (length - len(CAT))


def test_vocab_and_special_tokens():
    tok = get_tokenizer()
    assert len(tok) == VOCAB_SIZE == 49408
    assert (tok.bos_token_id, tok.eos_token_id) == (BOS_TOKEN_ID, EOS_TOKEN_ID)
    assert get_tokenizer() is tok  # cached


def test_exclamation_marks_keep_openai_ids():
    # "!" is id 0; it must not be cut out as a pad token (OpenAI: "wow!!" -> wow</w>, !!</w>).
    assert tokenize("wow!!", 8)[0].tolist() == [49406, 2781, 748, 49407, 0, 0, 0, 0]
    assert tokenize("  A  CAT! ", 8)[0].tolist() == [49406, 320, 2368, 256, 49407, 0, 0, 0]


def test_long_text_keeps_eos_last():
    ids = tokenize(["word " * 200, "x" * 500], context_length=16)
    assert ids.shape == (2, 16)
    assert (ids[:, -1] == EOS_TOKEN_ID).all() and (ids[:, 0] == BOS_TOKEN_ID).all()
    assert ((ids == EOS_TOKEN_ID).sum(-1) == 1).all()
    assert (ids[:, 1:-1] != 0).all()


def test_eos_position_is_the_text_towers_pooling_position():
    texts = ["a photo of a cat", "word " * 50, "", "hi"]
    model = build("tiny", kind="text")
    length = model.config.max_position_embeddings
    ids = tokenize(texts, context_length=length)
    expected = [6, length - 1, 1, 2]
    assert (ids == EOS_TOKEN_ID).int().argmax(-1).tolist() == expected
    with torch.no_grad():
        out = model.text_model(input_ids=ids)
    picked = out.last_hidden_state[torch.arange(len(texts)), torch.tensor(expected)]
    torch.testing.assert_close(out.pooler_output, picked, rtol=0, atol=0)


def test_save_tokenizer_round_trip(tmp_path):
    save_tokenizer(tmp_path)
    assert (tmp_path / "LICENSE.tokenizer").read_text().count("OpenAI") >= 1
    tok = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    texts = ["a photo of a cat", "Hello, World!! It's 3.14", "word " * 30, ""]
    enc = tok(texts, truncation=True, max_length=16, padding="max_length", return_tensors="pt")
    ours = tokenize(texts, context_length=16)
    # Same ids wherever there is text; padding is the only difference (HF pads with eos, we with 0).
    mask = enc["attention_mask"].bool()
    assert torch.equal(enc["input_ids"][mask], ours[mask])
    assert (ours[~mask] == 0).all()
    for text in texts:  # unpadded, the two agree token for token
        ids = tok(text)["input_ids"]
        assert tokenize(text)[0, : len(ids)].tolist() == ids
