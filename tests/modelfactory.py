"""Tiny, seeded transformers models built offline, to serve from `FakeHub` or load in workers.

Each builder writes a folder that `transformers` loads back with no network, in well under a second,
and with under 1 MB of files. The same seed gives byte-identical files (for one transformers
version), so lock-file hashes are stable within a test run. torch and transformers are imported
inside the builders: importing this module stays cheap.

transformers 5 writes only `tokenizer.json` and `tokenizer_config.json` for a tokenizer, and the
chat template to `chat_template.jinja`; the builders also write `vocab.txt`,
`special_tokens_map.json` and the template inside `tokenizer_config.json`, as older versions expect.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
WORDS_TEXT = (
    "the a an is was and not very good bad great terrible movie film book love hate like "
    "this that it i you we they model hello world"
)
WORDS = WORDS_TEXT.split()
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
MAX_LENGTH = 128
EOS_TOKEN = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SENTENCE_TRANSFORMERS_VERSIONS = {"sentence_transformers": "3.0.1", "transformers": "4.41.2"}


def wordpiece_vocab() -> list[str]:
    """About 100 tokens: the BERT specials, letters, digits, punctuation, words, suffix letters."""
    tokens = [*SPECIAL_TOKENS.values(), *LETTERS, *"0123456789", *".,!?'-", *WORDS]
    return list(dict.fromkeys([*tokens, *(f"##{letter}" for letter in LETTERS)]))


def build_tokenizer_files(dest: Path) -> None:
    """Save a tiny lower-casing WordPiece (BERT-style) tokenizer into `dest`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # lazy alias in v5

    vocab = wordpiece_vocab()
    ids = {token: index for index, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    wrapped = BertTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=MAX_LENGTH, **SPECIAL_TOKENS
    )
    wrapped.save_pretrained(dest)
    (dest / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    write_json(dest / "special_tokens_map.json", SPECIAL_TOKENS)


def build_embedding_model(dest: Path, seed: int = 0) -> Path:
    """A tiny BertModel with mean pooling, laid out as a sentence-transformers model."""
    from transformers import BertModel

    build_tokenizer_files(dest)
    save_model(BertModel, bert_config(), dest, seed)
    write_sentence_transformers_files(dest, hidden_size=bert_config().hidden_size)
    return dest


def build_classification_model(
    dest: Path, seed: int = 0, labels: Sequence[str] = ("negative", "positive")
) -> Path:
    """A tiny BertForSequenceClassification whose config names `labels`."""
    from transformers import BertForSequenceClassification

    id2label = dict(enumerate(labels))
    config = bert_config(
        num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    build_tokenizer_files(dest)
    save_model(BertForSequenceClassification, config, dest, seed)
    return dest


def build_generation_model(dest: Path, seed: int = 0) -> Path:
    """A tiny GPT-2 with a byte-level tokenizer, an eos token, a chat template, greedy defaults."""
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    vocab_size = build_byte_tokenizer_files(dest)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=MAX_LENGTH,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=0, eos_token_id=0, pad_token_id=0, do_sample=False, max_new_tokens=16
    )
    save_model(GPT2LMHeadModel, config, dest, seed, generation_config=generation)
    return dest


def build_byte_tokenizer_files(dest: Path) -> int:
    """Save a byte-level BPE tokenizer with no merges (one token a byte); return its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {EOS_TOKEN: 0, **{char: index + 1 for index, char in enumerate(alphabet)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS_TOKEN])
    specials = {name: EOS_TOKEN for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    wrapped = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        model_max_length=MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
        **specials,
    )
    wrapped.save_pretrained(dest)
    # transformers 4.x has no "TokenizersBackend" class and reads the template from this file.
    update_json(
        dest / "tokenizer_config.json",
        tokenizer_class="PreTrainedTokenizerFast",
        chat_template=CHAT_TEMPLATE,
    )
    write_json(dest / "special_tokens_map.json", specials)
    return len(vocab)


def bert_config(**overrides: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(wordpiece_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=MAX_LENGTH,
        **overrides,
    )


def save_model(model_class: Any, config: Any, dest: Path, seed: int, **attributes: Any) -> None:
    """Build `model_class(config)` from `seed` and save it as safetensors."""
    with seeded(seed):
        model = model_class(config)
    for name, value in attributes.items():
        setattr(model, name, value)
    model.save_pretrained(dest)  # transformers 5 always writes model.safetensors


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block, leaving the caller's random state untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def write_sentence_transformers_files(dest: Path, hidden_size: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    pooling = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    settings = {
        "__version__": SENTENCE_TRANSFORMERS_VERSIONS,
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    write_json(dest / "modules.json", modules)
    write_json(dest / "1_Pooling" / "config.json", pooling)
    write_json(dest / "config_sentence_transformers.json", settings)
    write_json(
        dest / "sentence_bert_config.json", {"max_seq_length": MAX_LENGTH, "do_lower_case": False}
    )


def model_files(dest: Path) -> dict[str, bytes]:
    """Every file under `dest`, keyed by its relative posix path, ready for `FakeHub.add_commit`."""
    return {
        path.relative_to(dest).as_posix(): path.read_bytes()
        for path in sorted(dest.rglob("*"))
        if path.is_file()
    }


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def update_json(path: Path, **updates: Any) -> None:
    write_json(path, {**json.loads(path.read_text(encoding="utf-8")), **updates})


def build_image_model(dest: Path, seed: int = 0) -> Path:
    """A tiny random Stable-Diffusion pipeline (UNet, VAE, CLIP text encoder and a byte-level CLIP
    tokenizer with no merges, DDIM), about 600 KB: a 64x64 image in a few steps takes well under a
    second on a CPU. Its own size is 64x64 (the UNet's 32 latents times the VAE's scale of 2)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    characters = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*characters, *(c + "</w>" for c in characters), "<|startoftext|>", "<|endoftext|>"]
    vocab, merges = dest / "clip" / "vocab.json", dest / "clip" / "merges.txt"
    write_json(vocab, {token: index for index, token in enumerate(tokens)})
    merges.write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=32)
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=2,
            norm_num_groups=4,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokens),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=32,
                bos_token_id=len(tokens) - 2,
                eos_token_id=len(tokens) - 1,
                pad_token_id=len(tokens) - 1,
            )
        )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    model = dest / "pipeline"
    pipeline.save_pretrained(model)
    return model
