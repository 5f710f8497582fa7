"""The "green LLM" demo: a tiny GPT-style byte-level language model on the Python standard library's own source.

Every Python install ships its standard library as ``.py`` files (``sysconfig.get_paths()["stdlib"]``): real text,
no download. :class:`StdlibTextDataModule` picks files from there deterministically (sorted names, a seeded
shuffle, a byte budget), holds whole files out for validation, and serves windows of ``seq_len + 1`` bytes.
:class:`TinyGPT` is a pre-norm decoder-only transformer over bytes (vocabulary 256) built from
``nn.MultiheadAttention`` and a GELU MLP — the blocks torch-pruning cuts head-consistently (``round_to`` = heads),
so it trains with every lightning-green callback at once, structured pruning and bf16 scheduling included.

The text depends on the Python version that runs it (its standard library), so losses are comparable between runs
on one install, not across Python versions.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import sysconfig
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import Dataset
from torchmetrics import MeanMetric

from lightning_green._internal.validation import InvalidArgumentError, check_choice, check_number, fail
from lightning_green.data.losses import reduce_sample_losses
from lightning_green.demos._data import SplitDataModule, check_demo_data, size_example_to_windows
from lightning_green.pruning.history import LoadsPrunedCheckpoints

__all__ = ["StdlibTextDataModule", "TinyGPT", "stdlib_files"]

VOCAB_SIZE = 256  # bytes


def stdlib_files(root: str | None = None) -> list[str]:
    """The ``.py`` files directly in ``root`` (default: this interpreter's standard library), sorted by name.

    Example:
        >>> files = stdlib_files()
        >>> len(files) > 50, all(f.endswith(".py") for f in files), files == sorted(files)
        (True, True, True)
    """
    root = root if root is not None else sysconfig.get_paths()["stdlib"]
    return sorted(p for p in glob.glob(os.path.join(glob.escape(root), "*.py")) if os.path.isfile(p))


class ByteWindows(Dataset):
    """Non-overlapping windows of a byte stream: ``(x, y)`` with ``y`` the next byte of each position in ``x``.

    With ``causal_lm`` a window is a Hugging Face causal-LM sample instead: ``{"input_ids": x, "attention_mask": 1s,
    "labels": x}`` (the model shifts the labels).
    """

    def __init__(self, data: torch.Tensor, seq_len: int, causal_lm: bool = False) -> None:
        self.data = data
        self.seq_len = seq_len
        self.causal_lm = causal_lm

    def __len__(self) -> int:
        return max((len(self.data) - 1) // self.seq_len, 0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]:
        chunk = self.data[i * self.seq_len : (i + 1) * self.seq_len + 1].long()
        if self.causal_lm:
            x = chunk[:-1]
            return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}
        return chunk[:-1], chunk[1:]


class StdlibTextDataModule(SplitDataModule):
    """Bytes of the Python standard library's ``.py`` files, split by file into train and validation text.

    The file list (sorted names) is shuffled with ``seed``; validation takes whole files from the front until it
    holds ``val_bytes``, training takes the following files until ``train_bytes``. Test and predict use the
    validation text. Files are separated by a NUL byte so no window runs silently from one into the next.

    Args:
        seq_len: Bytes of context per sample (the model predicts the next byte at each position).
        batch_size: Samples per batch.
        train_bytes: Bytes of training text.
        val_bytes: Bytes of validation text.
        seed: Seed of the file shuffle.
        root: Folder whose ``*.py`` files are read; ``None`` is this interpreter's standard library.
        num_workers: DataLoader worker processes.
        batch_format: ``"pairs"``: ``(x, y)`` tensors, ``y`` the next byte of each position of ``x``;
            ``"causal_lm"``: Hugging Face dicts ``input_ids``/``attention_mask``/``labels`` (``labels`` = ``input_ids``,
            the model shifts them), as :class:`~lightning_green.demos.HFCausalLM` and token counting expect.

    Raises:
        ValueError: An argument is out of range; in ``setup``: ``root`` has too little ``.py`` text.

    Example:
        >>> dm = StdlibTextDataModule(seq_len=32, batch_size=8, train_bytes=20_000, val_bytes=4_000)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), x.dtype, bool((x[:, 1:] == y[:, :-1]).all())
        ((8, 32), torch.int64, True)
        >>> dm.vocab_size, set(dm.train_files).isdisjoint(dm.val_files)
        (256, True)
    """

    vocab_size = VOCAB_SIZE

    @property
    def serves(self) -> str:
        """What its batches are: ``"token pairs"`` or ``"token dicts"`` (after ``batch_format``)."""
        return "token dicts" if self.batch_format == "causal_lm" else "token pairs"

    def __init__(
        self,
        seq_len: int = 64,
        batch_size: int = 32,
        train_bytes: int = 262_144,
        val_bytes: int = 32_768,
        seed: int = 0,
        root: str | None = None,
        num_workers: int = 0,
        batch_format: Literal["pairs", "causal_lm"] = "pairs",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_choice(name, "batch_format", batch_format, ("pairs", "causal_lm"))
        check_number(name, "seq_len", seq_len, integer=True, ge=2)
        check_number(name, "batch_size", batch_size, integer=True, ge=1)
        check_number(name, "train_bytes", train_bytes, integer=True, ge=seq_len + 1)
        check_number(name, "val_bytes", val_bytes, integer=True, ge=seq_len + 1)
        check_number(name, "seed", seed, integer=True)
        if root is not None and (not isinstance(root, str) or not root):
            fail(name, "root", root, "None or a folder path (str)", TypeError)
        check_number(name, "num_workers", num_workers, integer=True, ge=0)
        self.save_hyperparameters()
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.train_bytes = train_bytes
        self.val_bytes = val_bytes
        self.seed = seed
        self.root = root
        self.num_workers = num_workers
        self.batch_format = batch_format
        self.train_files: list[str] = []
        self.val_files: list[str] = []

    def setup(self, stage: str) -> None:
        """Pick the files and read the text (once)."""
        if self.train_set is not None:
            return
        name = type(self).__name__
        root = self.root if self.root is not None else sysconfig.get_paths()["stdlib"]
        files = stdlib_files(root)
        random.Random(self.seed).shuffle(files)
        val, val_files, rest = self._take(files, self.val_bytes)
        train, train_files, _ = self._take(rest, self.train_bytes)
        if len(val) < self.val_bytes or len(train) < self.train_bytes:
            raise InvalidArgumentError(
                f"{name}(root={self.root!r}): {root!r} holds {len(files)} .py file(s), too little text for "
                f"val_bytes={self.val_bytes} + train_bytes={self.train_bytes}; lower them or point `root` at a "
                "folder with more .py files."
            )
        self.val_files, self.train_files = val_files, train_files
        causal_lm = self.batch_format == "causal_lm"
        self.val_set = ByteWindows(torch.frombuffer(bytearray(val), dtype=torch.uint8), self.seq_len, causal_lm)
        self.train_set = ByteWindows(torch.frombuffer(bytearray(train), dtype=torch.uint8), self.seq_len, causal_lm)

    @staticmethod
    def _take(files: list[str], budget: int) -> tuple[bytes, list[str], list[str]]:
        """Whole files from the front until ``budget`` bytes (the last one cut); returns text, used, remaining."""
        parts: list[bytes] = []
        used = 0
        for i, path in enumerate(files):
            if used >= budget:
                return b"".join(parts)[:budget], files[:i], files[i:]
            with open(path, "rb") as f:
                text = f.read() + b"\0"
            parts.append(text)
            used += len(text)
        return b"".join(parts)[:budget], list(files), []


class Block(nn.Module):
    """Pre-norm transformer block: causal ``nn.MultiheadAttention`` and a GELU MLP, each on a residual."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One block over ``(batch, time, d_model)`` with a ``(time, time)`` causal mask."""
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False, is_causal=True)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(LoadsPrunedCheckpoints, pl.LightningModule):
    """A small decoder-only transformer over bytes: next-byte prediction, validation loss and perplexity.

    Logged: ``train_loss`` (per step and epoch), ``val_loss`` (mean cross-entropy per byte, nats) and ``val_ppl``
    (``exp(val_loss)``), the same for ``test_``. ``example_input_array`` (MAC counts, pruning graphs) follows the
    datamodule's ``seq_len``.

    Args:
        d_model: Width of the residual stream (a multiple of ``n_heads``).
        n_layers: Transformer blocks.
        n_heads: Attention heads per block.
        mlp_ratio: Hidden width of the MLP as a multiple of ``d_model``.
        block_size: Longest context (positions embedded); the datamodule's ``seq_len`` must not exceed it.
        dropout: Dropout in attention and MLP.
        lr: AdamW learning rate, cosine-annealed over ``max_epochs``.
        weight_decay: AdamW weight decay.

    Raises:
        ValueError: An argument is out of range; in ``setup``: the datamodule's ``seq_len`` exceeds ``block_size``.

    Example:
        >>> model = TinyGPT(d_model=32, n_layers=1, n_heads=4)
        >>> model(torch.zeros(2, 16, dtype=torch.long)).shape
        torch.Size([2, 16, 256])
        >>> len(model.generate(b"def ", max_new_bytes=5))
        9
    """

    def __init__(
        self,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        mlp_ratio: int = 4,
        block_size: int = 256,
        dropout: float = 0.0,
        lr: float = 3e-3,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_number(name, "n_heads", n_heads, integer=True, ge=1)
        check_number(name, "d_model", d_model, integer=True, ge=n_heads)
        if d_model % n_heads:
            fail(name, "d_model", d_model, f"a multiple of n_heads ({n_heads})")
        check_number(name, "n_layers", n_layers, integer=True, ge=1)
        check_number(name, "mlp_ratio", mlp_ratio, integer=True, ge=1)
        check_number(name, "block_size", block_size, integer=True, ge=2)
        check_number(name, "dropout", dropout, ge=0, lt=1)
        check_number(name, "lr", lr, gt=0)
        check_number(name, "weight_decay", weight_decay, ge=0)
        self.save_hyperparameters()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB_SIZE, bias=False)
        self.apply(_init_weights)
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()
        self.example_input_array = torch.zeros(1, min(64, block_size), dtype=torch.long)
        self._masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def setup(self, stage: str) -> None:
        """Size ``example_input_array`` like the datamodule's windows; refuse windows longer than ``block_size``.

        A demo datamodule of other batches (images, Hugging Face dicts) is refused here, before any batch.
        """
        check_demo_data(self, ("token pairs",), "lightning_green.demos.StdlibTextDataModule with batch_format='pairs'")
        size_example_to_windows(self, "block_size", self.block_size)

    def _mask(self, t: int, device: torch.device) -> torch.Tensor:
        key = (t, device)
        if key not in self._masks:
            self._masks[key] = torch.triu(torch.ones(t, t, dtype=torch.bool, device=device), diagonal=1)
        return self._masks[key]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-byte logits ``(batch, time, 256)`` for byte ids ``(batch, time)``."""
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        mask = self._mask(t, idx.device)
        with attention_kernels(idx.device):
            for block in self.blocks:
                x = block(x, mask)
        return self.head(self.ln_f(x))

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the next byte: one loss per window (mean over its bytes), via ``reduce_sample_losses``."""
        x, y = batch
        logits = self(x)
        token = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        losses = token.view(y.shape[0], -1).mean(dim=1)
        self.log("train_loss", losses.mean(), on_step=True, on_epoch=True, prog_bar=True)
        return reduce_sample_losses(self, losses)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate the validation loss, weighted by bytes."""
        self.val_nll.update(self._loss(batch), weight=batch[1].numel())

    def on_validation_epoch_end(self) -> None:
        """Log ``val_loss`` and ``val_ppl``."""
        log_nll(self, self.val_nll, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate the test loss, weighted by bytes."""
        self.test_nll.update(self._loss(batch), weight=batch[1].numel())

    def on_test_epoch_end(self) -> None:
        """Log ``test_loss`` and ``test_ppl``."""
        log_nll(self, self.test_nll, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The most likely next byte at every position."""
        return self(batch[0]).argmax(dim=-1)

    @torch.no_grad()
    def generate(self, prompt: bytes, max_new_bytes: int = 64, temperature: float = 0.0, seed: int = 0) -> bytes:
        """Continue ``prompt`` byte by byte (greedy at ``temperature=0``, else sampled with ``seed``)."""
        was_training = self.training
        self.eval()
        gen = torch.Generator().manual_seed(seed)
        idx = torch.tensor([list(prompt) or [0]], dtype=torch.long, device=self.device)
        for _ in range(max_new_bytes):
            logits = self(idx[:, -self.block_size :])[0, -1].float().cpu()
            if temperature > 0:
                nxt = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=gen)
            else:
                nxt = logits.argmax().view(1)
            idx = torch.cat([idx, nxt.view(1, 1).to(idx.device)], dim=1)
        self.train(was_training)
        out = bytes(idx[0].tolist())
        return out if prompt else out[1:]

    def configure_optimizers(self):  # noqa: D102 - Lightning hook
        return adamw_cosine(self, {id(p) for n, p in self.named_parameters() if "emb" in n})


def adamw_cosine(module: pl.LightningModule, no_decay: set[int]) -> dict:
    """The language-model demos' optimizer: AdamW with a cosine schedule over ``max_epochs``.

    Betas 0.9/0.95 and ``hparams.lr``; ``hparams.weight_decay`` on the matrices whose ``id`` is not in ``no_decay``
    (embeddings), none on the rest.
    """
    named = list(module.named_parameters())
    decay = [p for _, p in named if p.dim() >= 2 and id(p) not in no_decay]
    rest = [p for _, p in named if not (p.dim() >= 2 and id(p) not in no_decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": module.hparams.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=module.hparams.lr,
        betas=(0.9, 0.95),
    )
    max_epochs = module.trainer.max_epochs if module.trainer.max_epochs and module.trainer.max_epochs > 0 else 10
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def log_nll(module: pl.LightningModule, metric: MeanMetric, stage: str) -> None:
    """Log ``{stage}_loss`` (the token-weighted mean NLL ``metric`` holds) and ``{stage}_ppl``, then reset it."""
    nll = metric.compute()
    metric.reset()
    module.log(f"{stage}_loss", nll, prog_bar=True)
    module.log(f"{stage}_ppl", torch.exp(nll), prog_bar=True)


def attention_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """The math attention kernel under bf16 autocast on a CPU; elsewhere torch's own choice.

    torch's fused CPU attention kernel is several times slower in bf16 than in fp32 at this model's sizes (the
    backward pass ~9x for 4 heads of 16 dims, torch 2.13), which alone makes bf16 training slower than fp32. The
    math kernel in bf16 is on a par with fp32 there, and the matmuls around it keep their bf16 speed-up.

    Example:
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     type(attention_kernels(torch.device("cpu"))).__name__
        '_GeneratorContextManager'
        >>> type(attention_kernels(torch.device("cpu"))).__name__
        'nullcontext'
    """
    if device.type == "cpu" and _cpu_autocast_dtype() == torch.bfloat16:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype of CPU autocast now, ``None`` when it is off."""
    try:
        on = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu")
    except TypeError:  # torch < 2.4
        on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return dtype if on else None


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
