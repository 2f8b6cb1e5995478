"""Shared fixtures: a small synthetic catalog and tiny random transformers backbones.

The tiny backbones are real transformers checkpoints (ViT and BERT, a few thousand weights)
saved to a temp dir, so `load_backbone("hf:<dir>")` runs offline in milliseconds and every
package can test the real code path without downloading anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Nothing in the tests may reach the network for weights.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGE_SIZE = 32
TINY_HIDDEN = 32
SAMPLE_CATALOG_PRODUCTS = 80


def _tiny_layers() -> dict[str, int]:
    return {
        "hidden_size": TINY_HIDDEN,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 2 * TINY_HIDDEN,
    }


@pytest.fixture(scope="session")
def sample_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a generated catalog.csv (80 products over every leaf; images beside it)."""
    from train.sample_catalog import write_sample_catalog

    return write_sample_catalog(
        tmp_path_factory.mktemp("sample_catalog"), n_products=SAMPLE_CATALOG_PRODUCTS, seed=0
    )


@pytest.fixture(scope="session")
def tiny_image_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ViT (32 px, 32-d pooled output) with its image processor config."""
    import torch
    from transformers import ViTConfig, ViTModel

    out = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=TINY_IMAGE_SIZE, patch_size=8, **_tiny_layers())
    ViTModel(config).save_pretrained(out)
    # Written by hand so it loads with the Pillow backend on every transformers version.
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out


def _tiny_vocab() -> list[str]:
    """Special tokens, the sample catalog's words, and single characters (so little is [UNK])."""
    from train.sample_catalog import BRANDS, GENDERS, MATERIALS, NOISE, leaves
    from train.sample_drawing import COLOURS

    chars = "abcdefghijklmnopqrstuvwxyz0123456789-"
    words = {w.lower() for w in (*BRANDS, *COLOURS, *GENDERS, *MATERIALS, *NOISE)}
    for leaf in leaves():
        words.update(w.lower() for phrase in (*leaf.nouns, *leaf.path) for w in phrase.split())
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return [*special, *chars, *(f"##{c}" for c in chars), *sorted(words - set(chars))]


@pytest.fixture(scope="session")
def tiny_text_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer BERT (32-d) with a WordPiece tokenizer over a small vocab."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_bert")
    vocab = {token: i for i, token in enumerate(_tiny_vocab())}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    ).save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), max_position_embeddings=128, **_tiny_layers())
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_image_backbone(tiny_image_backbone_dir: Path):
    """The tiny ViT loaded on CPU as an embedder ImageBackbone."""
    from embedder.backbones import load_backbone

    return load_backbone(f"hf:{tiny_image_backbone_dir}", device="cpu")


@pytest.fixture(scope="session")
def tiny_text_backbone(tiny_text_backbone_dir: Path):
    """The tiny BERT loaded on CPU as an embedder TextBackbone."""
    from embedder.backbones import load_backbone

    return load_backbone(f"hf:{tiny_text_backbone_dir}", device="cpu")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data (or $HUSE_SHARED_DATA); tests that use it skip where it is absent."""
    path = Path(os.environ.get("HUSE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set HUSE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def pipeline_run(sample_catalog, tiny_image_backbone_dir, tiny_text_backbone_dir,
                 tmp_path_factory):
    """(config, OUT) of the session's one end-to-end `train.pipeline.run` on the sample catalog
    with tiny backbones (the image one with its colour histogram, like the default), shared by
    the train and API tests. Read-only: copy OUT to write."""
    from train.config import TrainConfig
    from train.pipeline import run

    out = tmp_path_factory.mktemp("pipeline_run")
    cfg = TrainConfig(catalog=str(sample_catalog), out=str(out / "model"),
                      cache_dir=str(out / "cache"),
                      image_backbone=f"hf:{tiny_image_backbone_dir}+colour",
                      text_backbone=f"hf:{tiny_text_backbone_dir}",
                      embed_dim=16, image_towers=((32,), (32, 32)), text_tower=(32,),
                      batch_size=32,
                      max_epochs=3, min_per_class=1, attribute_heads=("gender",),
                      tfidf_max_features=200, num_workers=0, device="cpu",
                      index_factory="Flat")
    return cfg, run(cfg)


@pytest.fixture(scope="session")
def milvus_lite_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Milvus Lite file per session (its in-process server starts once); a collection per
    test keeps the tests apart."""
    pytest.importorskip("pymilvus", reason="Milvus tests need the 'scale' extra")
    pytest.importorskip("milvus_lite", reason="Milvus tests need the 'scale' extra")
    return tmp_path_factory.mktemp("milvus") / "lite.db"
