from captioning.text import CaptionTokenizer


def test_tokenizer_lowercases_drops_punctuation_and_maps_rare_words_to_unknown():
    captions = ["A red circle, above a BLUE square.", "a red square", "a red zebra"] * 2 + ["a unicorn"]
    tokenizer = CaptionTokenizer.train(captions, min_frequency=2)
    vocab = tokenizer.tokenizer.get_vocab()
    assert {"a", "red", "circle", "blue", "square", "zebra"} <= set(vocab) and "unicorn" not in vocab
    tokens = tokenizer.encode(["A unicorn above a red square!"], max_length=20)[0].tolist()
    assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
    assert tokenizer.unk_id in tokens
    assert tokenizer.decode(tokens) == "a above a red square"


def test_encode_cuts_to_max_length_and_pads_a_batch():
    tokenizer = CaptionTokenizer.train(["one two three four five six"], min_frequency=1)
    tokens = tokenizer.encode(["one two three four five six", "two"], max_length=4)
    assert tokens.shape == (2, 5)  # [BOS] + 3 words + [EOS]; the decoder reads 4 and writes 4
    assert tokens[1].tolist()[3:] == [tokenizer.pad_id] * 2
    assert tokenizer.decode(tokens[0]) == "one two three"


def test_tokenizer_round_trips_through_json():
    tokenizer = CaptionTokenizer.train(["a red circle", "a blue square"], min_frequency=1)
    again = CaptionTokenizer.from_json(tokenizer.to_json())
    ids = tokenizer.encode(["a blue circle"], 10)
    assert again.encode(["a blue circle"], 10).tolist() == ids.tolist()
    assert again.decode(ids[0]) == "a blue circle"
