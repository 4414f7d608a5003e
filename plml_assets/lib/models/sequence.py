"""Recurrent networks (LSTM, GRU) over per-symbol windows of the features.

Windows. The input for row (t, s) is the ``window`` rows of symbol s dated <= t, in date order,
ending with row (t, s) itself: rows of that symbol only, never a later row (no look-ahead) and
never another symbol's row. "Rows" are the rows present in the frame given, so a date on which the
symbol has no row is skipped, as the features and labels count trading days. A row with fewer than
``window - 1`` earlier rows is left-padded with zero rows; every step carries one extra input
channel, the mask (1 for a real row, 0 for padding), so the network can tell padding from a
feature at its mean. Every row gets a prediction, padded or not.

Segments. A window holds consecutive dates of a trading calendar only. Given a ``calendar`` (the
panel's sorted trading dates), the frame's dates split into segments wherever the next date of the
frame is not the next calendar date, i.e. wherever whole dates are missing from the frame (the
test block and purged dates of a K-fold or CPCV training set): a window never reaches back past
the start of its row's segment, so the first rows after a gap are left-padded exactly like a
symbol's first rows, instead of being stitched to the rows before the gap as if those were the
previous days. A date on which one symbol alone has no row is no gap (see above). Without a
calendar the frame's own dates are the calendar: one segment, as for a contiguous (walk-forward)
training set, whose windows are the same either way.

Scaling. The ``scaling`` hyper-parameter (``lib.features.scaling``, shared with every family through
``Model._fit_scaling``/``_apply_scaling``) is applied first, fitted on the training rows. Then
each feature is standardized with a mean and standard deviation fitted on the training rows alone
and stored in the model; NaN (and +/-inf) then become 0, the training mean, and values are
clipped to +/-``FEATURE_CLIP_SD`` deviations so that one wild value cannot saturate a cell. The
target is standardized the same way (training rows' mean and deviation) and clipped to
+/-``target_clip_sd`` deviations for the MSE loss; predictions are mapped back to target units.

History. :meth:`SequenceModel.predict` builds each row's window from the rows of ``X`` alone: pass
the ``window - 1`` preceding rows of every symbol too (serving rebuilds features from raw price
history anyway) and keep the predictions of the rows you need. In :meth:`SequenceModel.fit`:
- ``calendar`` (default: the dates of the rows given) cuts the windows into segments, see above;
  ``lib.models.training.fit_model`` passes the panel's dates when the training rows have holes;
- a row whose target is NaN is not a training sample but still serves as history for later rows,
  so a caller can prepend history rows with an unknown label (``fit_model`` so gives the
  validation rows the purged rows before them, so their windows do not jump the purge);
- validation rows take their history from the training rows as well (train and valid are
  windowed together when they share no (date, symbol) row, else each on its own). Windows only
  look back, so a validation window can hold training rows' features, which are past
  information, but never a label.

Incremental update. :meth:`SequenceModel.fit_incremental` fine-tunes the fitted weights on new
rows (windowed as in ``fit``) at ``FINE_TUNE_LR_FACTOR`` times ``lr`` with a fresh optimizer,
reading them through the scaler, feature standardization and target scaling fitted by ``fit``
(not refitted: the network learnt in those units). The weights it started from compete as epoch
0 in early stopping. ``best_epoch_`` and ``n_epochs_`` then count the epochs behind the kept
weights from the fit's kept epoch on, so ``lib.models.training.best_iteration`` keeps its meaning.

Determinism. ``fit`` seeds torch (in a forked RNG state, so the caller's global RNG is left as it
was) and shuffles with its own generator; on CPU it runs under
``torch.use_deterministic_algorithms(True)``, so two fits with the same seed, data and thread count
give identical weights. On CUDA the same flag is set with ``warn_only=True`` (cuDNN RNNs need a
cuBLAS workspace setting that must precede CUDA's initialization), so GPU runs are close, not
bit-identical.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import torch
from torch import nn

from plml_assets.lib.models.base import Dataset, Model

FEATURE_CLIP_SD = 10.0
#: An incremental update fine-tunes at this fraction of the model's ``lr``: the weights are
#: already near a minimum, and a full step would forget the old period within an epoch.
FINE_TUNE_LR_FACTOR = 0.3
PREDICT_BATCH_ROWS = 8192
#: integrated-gradients points on the path from the reference (``contributions``) and rows per batch
IG_STEPS, IG_BATCH_ROWS = 32, 1024
STATE_FILE = "model.pt"
META_FILE = "model_meta.json"


class SequenceWindows:
    """Look-back windows of every row of a (date, symbol) panel, gathered on demand.

    The rows are laid out symbol by symbol in date order, each symbol's block (its rows in one
    segment of contiguous calendar dates, see the module docstring) preceded by ``window - 1``
    zero rows, with the mask channel appended; the window of a row is then the ``window``
    consecutive rows of that layout ending at the row, so a batch is one vectorized gather
    (``padded[starts[rows, None] + arange(window)]``) and no window is stored. Without a
    ``calendar``, or when the frame's dates are contiguous in it, a symbol is one block.
    """

    def __init__(
        self, values: np.ndarray, dates: pd.Index | np.ndarray, symbols: pd.Index | np.ndarray, window: int,
        calendar: pd.Index | np.ndarray | None = None,
    ):
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or len(values) != len(dates) or len(values) != len(symbols):
            raise ValueError(
                f"values must be a (rows, features) matrix with one date and one symbol per row; got shape "
                f"{values.shape}, {len(dates)} dates and {len(symbols)} symbols"
            )
        if window < 1:
            raise ValueError(f"window must be >= 1; got {window!r}")
        date_codes, date_values = pd.factorize(np.asarray(dates), sort=True)
        symbol_codes, symbol_names = pd.factorize(np.asarray(symbols), sort=True)
        order = np.lexsort((date_codes, symbol_codes))  # symbol-major, date order within a symbol
        sorted_symbols, sorted_dates = symbol_codes[order], date_codes[order]
        repeated = (sorted_symbols[1:] == sorted_symbols[:-1]) & (sorted_dates[1:] == sorted_dates[:-1])
        if repeated.any():
            k = int(np.flatnonzero(repeated)[0])
            raise ValueError(
                f"duplicate row for symbol {symbol_names[sorted_symbols[k]]!r} on date "
                f"{pd.Index(np.asarray(dates))[order[k]]!r}: a panel holds one row per (date, symbol)"
            )
        pad = window - 1
        n_rows, n_features = values.shape
        # One block per (symbol, segment), numbered in layout order; a row's block's zero rows and
        # those of every block before it shift it by (block + 1) * pad. With one segment the block
        # number is the symbol code (0..S-1 in sorted order).
        sorted_segments = date_segments(date_values, calendar)[sorted_dates]
        new_block = np.ones(n_rows, dtype=bool)
        new_block[1:] = (sorted_symbols[1:] != sorted_symbols[:-1]) | (sorted_segments[1:] != sorted_segments[:-1])
        block = np.cumsum(new_block) - 1
        position = np.arange(n_rows) + (block + 1) * pad
        padded = np.zeros((n_rows + int(new_block.sum()) * pad, n_features + 1), dtype=np.float32)
        padded[position, :n_features] = values[order]
        padded[position, n_features] = 1.0
        starts = np.empty(n_rows, dtype=np.int64)
        starts[order] = position - pad  # back to the input's row order
        self.window = int(window)
        self.padded = padded
        self.starts = starts

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, window: int, calendar: pd.Index | np.ndarray | None = None) -> Self:
        _check_panel_index(frame, "frame")
        return cls(frame.to_numpy(dtype=np.float32), frame.index.get_level_values("date"),
                   frame.index.get_level_values("symbol"), window, calendar)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def n_channels(self) -> int:
        """Features per step, the mask (last channel) included."""
        return self.padded.shape[1]

    def batch(self, rows: np.ndarray) -> np.ndarray:
        """Windows of the given row positions: shape (len(rows), window, n_channels)."""
        return self.padded[self.starts[np.asarray(rows)][:, None] + np.arange(self.window)]


def date_segments(dates: pd.Index | np.ndarray, calendar: pd.Index | np.ndarray | None) -> np.ndarray:
    """Segment number (0, 1, ...) of each of the sorted unique ``dates``: a new segment starts at
    a date that is not the calendar date right after the previous one (calendar dates are missing
    in between). ``calendar`` None: one segment. Every date must be a date of ``calendar``."""
    dates = pd.Index(np.asarray(dates))
    if calendar is None or len(dates) == 0:
        return np.zeros(len(dates), dtype=np.int64)
    calendar = pd.Index(np.unique(np.asarray(calendar)))
    where = calendar.get_indexer(dates)
    if (where < 0).any():
        raise ValueError(
            f"date {dates[np.flatnonzero(where < 0)[0]]!r} of the rows is not in the calendar: pass the panel's "
            "trading dates (every date of the rows among them)"
        )
    return np.concatenate([[0], np.cumsum(np.diff(where) != 1)]).astype(np.int64)


def _check_panel_index(X: pd.DataFrame, name: str) -> None:
    if not isinstance(X.index, pd.MultiIndex) or not {"date", "symbol"} <= set(X.index.names):
        raise ValueError(
            f"{name} must be indexed by a (date, symbol) MultiIndex: sequence models window each symbol's "
            f"history; got index names {list(X.index.names)}"
        )


#: how the recurrent stack's outputs over the window become one vector for the linear head
POOLING_HEADS = ("last", "attention")


class _RecurrentRegressor(nn.Module):
    """A recurrent stack over the window, then a linear head on one vector: the last step's output
    (``pooling="last"``; bidirectional: the forward direction's last step and the backward direction's
    first, each direction's summary of the whole window), or a temporal attention pooling
    (``pooling="attention"``: softmax weights over the window's steps from a learned score of each
    step's output, then their weighted sum). A window holds only dates up to the row's own date, so
    reading it backwards (bidirectional) sees no future."""

    def __init__(self, cell: str, n_inputs: int, hidden_size: int, num_layers: int, dropout: float,
                 bidirectional: bool = False, pooling: str = "last"):
        super().__init__()
        recurrent = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = recurrent(
            n_inputs, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,  # torch applies it between layers only
        )
        self.hidden_size, self.bidirectional, self.pooling = hidden_size, bidirectional, pooling
        width = hidden_size * (2 if bidirectional else 1)
        if pooling == "attention":
            self.score = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1, bias=False))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, 1)

    def pool(self, out: torch.Tensor) -> torch.Tensor:
        if self.pooling == "attention":
            weights = torch.softmax(self.score(out).squeeze(-1), dim=1)  # (batch, steps)
            return (weights.unsqueeze(-1) * out).sum(dim=1)
        if self.bidirectional:
            return torch.cat([out[:, -1, : self.hidden_size], out[:, 0, self.hidden_size:]], dim=-1)
        return out[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.dropout(self.pool(out))).squeeze(-1)


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Intra-op CPU threads for one fit or predict (on 2 shared cores a second thread mostly
    contends with the other process), restored afterwards; None leaves torch's setting alone."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but CUDA is not available here; use device='auto' or 'cpu'")
    return resolved


def _whole(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _invalid_params(model: object, checks: dict[str, Callable[[Any], bool]]) -> list[str]:
    """Names of the hyper-parameters whose check fails; a value of the wrong type fails too."""
    bad = []
    for name, check in checks.items():
        try:
            ok = bool(check(getattr(model, name)))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(name)
    return bad


def _valid_device(device: object) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    return isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()


class SequenceModel(Model):
    _fitted_attribute = "network_"
    """Shared fit/predict/save of the recurrent families; use :class:`LSTMModel` or :class:`GRUModel`."""

    cell: ClassVar[str]

    _PARAM_NAMES = (
        "window", "hidden_size", "num_layers", "dropout", "lr", "batch_size", "max_epochs", "patience",
        "grad_clip", "weight_decay", "target_clip_sd", "epoch_samples", "num_threads", "seed", "device",
        "scaling", "bidirectional", "pooling",
    )

    def __init__(
        self,
        window: int = 20,
        hidden_size: int = 32,
        num_layers: int = 1,
        dropout: float = 0.0,
        lr: float = 1e-3,
        batch_size: int = 512,
        max_epochs: int = 30,
        patience: int = 5,
        grad_clip: float | None = 1.0,
        weight_decay: float = 0.0,
        target_clip_sd: float | None = 5.0,
        epoch_samples: int | None = None,
        num_threads: int | None = 1,
        seed: int = 0,
        device: str = "auto",
        scaling: str = "none",
        bidirectional: bool = False,
        pooling: str = "last",
    ) -> None:
        if not hasattr(type(self), "cell"):
            raise TypeError("SequenceModel is a base class: use LSTMModel or GRUModel")
        self.window = window
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.grad_clip = grad_clip
        self.weight_decay = weight_decay
        self.target_clip_sd = target_clip_sd
        self.epoch_samples = epoch_samples
        self.num_threads = num_threads
        self.seed = seed
        self.device = device
        self.scaling = scaling
        self.bidirectional = bidirectional
        self.pooling = pooling
        self._validate()

    def _validate(self) -> None:
        checks = {
            "window": lambda v: _whole(v) and 1 <= v <= 1024,
            "hidden_size": lambda v: _whole(v) and v >= 1,
            "num_layers": lambda v: _whole(v) and v >= 1,
            "dropout": lambda v: 0 <= v < 1,
            "lr": lambda v: 0 < v <= 1,
            "batch_size": lambda v: _whole(v) and v >= 1,
            "max_epochs": lambda v: _whole(v) and v >= 1,
            # 0 turns early stopping off: the last epoch's weights are kept.
            "patience": lambda v: _whole(v) and v >= 0,
            "grad_clip": lambda v: v is None or v > 0,
            "weight_decay": lambda v: v >= 0,
            "target_clip_sd": lambda v: v is None or v > 0,
            "epoch_samples": lambda v: v is None or (_whole(v) and v >= 1),
            "num_threads": lambda v: v is None or (_whole(v) and v >= 1),
            "seed": lambda v: _whole(v) and v >= 0,
            "device": _valid_device,
            "scaling": self._valid_scaling,
            "bidirectional": lambda v: isinstance(v, (bool, np.bool_)),
            "pooling": lambda v: v in POOLING_HEADS,
        }
        bad = _invalid_params(self, checks)
        if bad:
            raise ValueError(
                f"invalid {type(self).__name__} hyper-parameter(s): "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                + f" (device is 'auto', 'cpu', 'cuda' or 'cuda:N'; grad_clip and target_clip_sd are > 0 or None; "
                f"pooling is one of {list(POOLING_HEADS)}; bidirectional is True or False)"
            )

    def get_params(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self._PARAM_NAMES}

    @property
    def lookback_dates(self) -> int:
        return int(self.window) - 1

    # --- scaling -------------------------------------------------------------------------------

    def _scaled(self, X: pd.DataFrame) -> np.ndarray:
        values = X[self.feature_names_].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            z = (values - self.feature_mean_) / self.feature_std_
        z = np.where(np.isfinite(z), z, 0.0)
        return np.clip(z, -FEATURE_CLIP_SD, FEATURE_CLIP_SD).astype(np.float32)

    def _fit_standardizer(self, X: pd.DataFrame) -> None:
        values = X.to_numpy(dtype=np.float64)
        values = np.where(np.isfinite(values), values, np.nan)
        seen = np.isfinite(values).any(axis=0)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: handled below
            mean = np.nanmean(values, axis=0)
            std = np.nanstd(values, axis=0)
        self.feature_mean_ = np.where(seen, mean, 0.0)
        self.feature_std_ = np.where(seen & (std > 0), std, 1.0)

    def _scaled_target(self, y: np.ndarray) -> np.ndarray:
        z = (y - self.target_mean_) / self.target_std_
        return z if self.target_clip_sd is None else np.clip(z, -self.target_clip_sd, self.target_clip_sd)

    # --- fit -----------------------------------------------------------------------------------

    def fit(self, train: Dataset, valid: Dataset | None = None, *, calendar: pd.Index | np.ndarray | None = None) -> Self:
        """Fit on ``train``, early stopping on ``valid``. ``calendar``: the trading dates the rows
        come from (the panel's dates); windows do not cross a date of it missing from the rows
        (module docstring, Segments). None: the rows' own dates, one segment."""
        start = time.perf_counter()
        X, y = train
        y = self._train_target(X, y)
        self.feature_names_ = [str(c) for c in X.columns]
        X = self._fit_scaling(X.set_axis(self.feature_names_, axis=1))  # on the training rows only
        self._fit_standardizer(X)
        known = np.isfinite(y)
        self.target_mean_ = float(y[known].mean())
        spread = float(y[known].std())
        self.target_std_ = spread if spread > 0 else 1.0

        device = _resolve_device(self.device)
        trained = self._train(device, *self._layout(X, y, valid, calendar))
        self.network_, self.history_, self.best_epoch_, self.n_epochs_ = trained
        self.device_ = str(device)
        self.incremental_updates_ = 0
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def default_update_rounds(self) -> int:
        """Epochs an incremental update runs at most when not told: a third of ``max_epochs``, at least 1."""
        return max(1, self.max_epochs // 3)

    def fit_incremental(
        self, train: Dataset, valid: Dataset | None = None, *, rounds: int | None = None,
        calendar: pd.Index | np.ndarray | None = None,
    ) -> Self:
        """Fine-tune the fitted network on ``train`` for at most ``rounds`` epochs (default
        :meth:`default_update_rounds`) at ``lr * FINE_TUNE_LR_FACTOR``, early stopping on ``valid``
        from the weights as they were (kept when no epoch beats them on ``valid``). The scaler,
        the feature standardization and the target scaling fitted by :meth:`fit` are kept, so
        the new rows are read in the same units. ``calendar`` as in :meth:`fit`. Returns self."""
        start = time.perf_counter()
        epochs = self._update_budget(rounds, self.default_update_rounds())
        X, y = train
        y = self._train_target(X, y)
        X = self._apply_scaling(self._update_frame(X, "train"))
        if valid is not None:
            _check_panel_index(valid[0], "valid X")
            valid = (self._update_frame(valid[0], "valid"), valid[1])
        device = _resolve_device(self.device)
        network = copy.deepcopy(self.network_).to(device)  # self stays as it was should training fail
        network, history, best_epoch, epochs_run = self._train(
            device, *self._layout(X, y, valid, calendar), network=network, lr=self.lr * FINE_TUNE_LR_FACTOR, max_epochs=epochs,
        )
        # Epochs of training behind the kept weights, counted on from the epoch the fit kept.
        self.n_epochs_ = self.best_epoch_ + epochs_run
        self.best_epoch_ = self.best_epoch_ + best_epoch
        self.network_, self.history_ = network, history
        self.device_ = str(device)
        self._count_update()
        self.fit_seconds_ = time.perf_counter() - start
        return self

    @staticmethod
    def _train_target(X: pd.DataFrame, y: pd.Series | np.ndarray) -> np.ndarray:
        _check_panel_index(X, "train X")
        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(X):
            raise ValueError(f"train X has {len(X)} rows but y has {len(y)}")
        if not np.isfinite(y).any():
            raise ValueError("train y has no finite value: nothing to fit")
        return y

    def _layout(
        self, X: pd.DataFrame, y: np.ndarray, valid: Dataset | None, calendar: pd.Index | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The windows of the (scaled) training rows ``X`` and of ``valid`` (raw, scaled here),
        their standardized targets and the row positions that are training and validation samples.
        Windows stay within the segments of contiguous ``calendar`` dates (None: the rows' own dates)."""
        frames, targets = [X], [y]
        if valid is not None:
            Xv, yv = valid
            _check_panel_index(Xv, "valid X")
            yv = np.asarray(yv, dtype=np.float64)
            if len(yv) != len(Xv):
                raise ValueError(f"valid X has {len(Xv)} rows but y has {len(yv)}")
            missing = [c for c in self.feature_names_ if c not in Xv.columns.astype(str)]
            if missing:
                raise ValueError(f"valid X lacks feature column(s) {missing[:10]}")
            frames.append(self._apply_scaling(Xv.set_axis([str(c) for c in Xv.columns], axis=1)[self.feature_names_]))
            targets.append(yv)
        combined = pd.concat(frames) if len(frames) > 1 else X
        z_target = self._scaled_target(np.concatenate(targets))
        n_train = len(X)
        sample = np.isfinite(z_target)
        train_rows = np.flatnonzero(sample[:n_train])
        valid_rows = np.flatnonzero(sample[n_train:]) + n_train

        if len(frames) > 1 and combined.index.duplicated().any():
            # Train and valid overlap: window each on its own rows so no row is its own history twice.
            parts = [self._windows(f, calendar) for f in frames]
            padded = np.concatenate([p.padded for p in parts])
            starts = np.concatenate([parts[0].starts, parts[1].starts + len(parts[0].padded)])
        else:
            windows = self._windows(combined, calendar)
            padded, starts = windows.padded, windows.starts
        return padded, starts, z_target, train_rows, valid_rows

    def _windows(self, X: pd.DataFrame, calendar: pd.Index | np.ndarray | None = None) -> SequenceWindows:
        return SequenceWindows.from_frame(pd.DataFrame(self._scaled(X), index=X.index), self.window, calendar)

    def _network(self) -> _RecurrentRegressor:
        n_inputs = len(self.feature_names_) + 1  # the mask channel
        return _RecurrentRegressor(self.cell, n_inputs, self.hidden_size, self.num_layers, self.dropout,
                                   bidirectional=bool(self.bidirectional), pooling=self.pooling)

    def _train(
        self, device: torch.device, padded: np.ndarray, starts: np.ndarray, target: np.ndarray,
        train_rows: np.ndarray, valid_rows: np.ndarray, *, network: _RecurrentRegressor | None = None,
        lr: float | None = None, max_epochs: int | None = None,
    ) -> tuple[_RecurrentRegressor, dict[str, list[float]], int, int]:
        """Train ``network`` (a fresh one when None) and return it with its loss history, the
        epoch whose weights it holds (0: those it started from, kept when no epoch beat them on
        the validation rows) and the epochs run. ``lr`` and ``max_epochs`` default to the model's."""
        lr = self.lr if lr is None else lr
        max_epochs = self.max_epochs if max_epochs is None else max_epochs
        rng_devices = []
        if device.type == "cuda":
            rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=rng_devices), _deterministic(device), _threads(self.num_threads):
            torch.manual_seed(self.seed)
            shuffle = torch.Generator().manual_seed(self.seed)
            layout = torch.from_numpy(padded).to(device)
            first = torch.from_numpy(starts).to(device)
            steps = torch.arange(self.window, device=device)
            labels = torch.from_numpy(np.nan_to_num(target).astype(np.float32)).to(device)
            if self.epoch_samples is not None and len(valid_rows) > self.epoch_samples:
                # The early-stopping loss on a fixed seeded subset: the same rows every epoch, at
                # the cost of an epoch's training sample rather than of the whole slice.
                pick = np.random.default_rng(self.seed).choice(len(valid_rows), self.epoch_samples, replace=False)
                valid_rows = np.sort(valid_rows[pick])
            fit_rows = torch.from_numpy(train_rows).to(device)
            stop_rows = torch.from_numpy(valid_rows).to(device)

            def windows(rows: torch.Tensor) -> torch.Tensor:
                return layout[first[rows].unsqueeze(1) + steps]

            fine_tune = network is not None
            if network is None:
                network = self._network().to(device)
            # Data-parallel (lib/models/ddp.py): every rank draws the same global batches and trains on
            # its share of each; DistributedDataParallel averages the gradients, so the step is the
            # one-process step on the whole batch.
            rank, world = getattr(self, "_ddp", None) or (0, 1)
            trained = network
            if world > 1:
                from torch.nn.parallel import DistributedDataParallel

                trained = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
            optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=self.weight_decay)
            loss_fn = nn.MSELoss()

            def valid_loss() -> float:
                network.eval()
                total = 0.0
                with torch.no_grad():
                    for chunk in torch.split(stop_rows, PREDICT_BATCH_ROWS):
                        total += float(loss_fn(network(windows(chunk)), labels[chunk])) * len(chunk)
                return total / len(stop_rows)

            history: dict[str, list[float]] = {"train": [], "valid": []}
            best_loss, best_epoch, best_state, stale = np.inf, 0, None, 0
            if fine_tune and len(stop_rows):
                # A network trained before competes as epoch 0: an update never ends worse on valid.
                best_loss = valid_loss()
                best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
                history["start_valid"] = [best_loss]
            for epoch in range(1, max_epochs + 1):
                network.train()
                order = fit_rows[torch.randperm(len(fit_rows), generator=shuffle).to(device)]
                if self.epoch_samples is not None:
                    order = order[: self.epoch_samples]  # a fresh random subset of the windows each epoch
                total = torch.zeros((), device=device)  # summed on the device: no sync per step
                seen = 0
                for batch in torch.split(order, self.batch_size):
                    if world > 1:
                        if len(batch) < world:  # a ragged last batch some rank would get nothing of: every rank skips it
                            continue
                        share = batch[rank::world]
                        optimizer.zero_grad(set_to_none=True)
                        # Summed over this rank's share and scaled so that DDP's mean over the ranks is
                        # the mean over the whole batch, whatever the shares' sizes.
                        errors = (trained(windows(share)) - labels[share]) ** 2
                        loss = errors.sum() * world / len(batch)
                        part = errors.detach().sum()
                    else:
                        optimizer.zero_grad(set_to_none=True)
                        loss = loss_fn(trained(windows(batch)), labels[batch])
                        part = loss.detach() * len(batch)
                    loss.backward()
                    if self.grad_clip is not None:
                        nn.utils.clip_grad_norm_(network.parameters(), self.grad_clip)
                    optimizer.step()
                    total += part
                    seen += len(batch)
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(total)  # every rank's share of the epoch's squared errors
                history["train"].append(float(total) / max(seen, 1))
                if len(stop_rows) == 0:
                    continue
                current = valid_loss()
                history["valid"].append(current)
                if current < best_loss:
                    best_loss, best_epoch, stale = current, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
                else:
                    stale += 1
                    if self.patience and stale >= self.patience:
                        break
            if best_state is not None and self.patience:
                network.load_state_dict(best_state)
            else:
                best_epoch = epoch  # no validation or early stopping off: the last epoch's weights
        network.eval()
        return network, history, best_epoch, epoch

    # --- predict -------------------------------------------------------------------------------

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """One score per row of ``X``, each from the window of its symbol's rows in ``X`` ending at it."""
        return self.predict_positions(X, None)

    def predict_positions(self, X: pd.DataFrame, positions: np.ndarray | None) -> np.ndarray:
        """Scores of the rows at ``positions`` of ``X`` only (all rows when None), each windowed over
        ``X``: the other rows serve as history and cost nothing to score."""
        self._check_fitted()
        _check_panel_index(X, "X")
        X = X.set_axis([str(c) for c in X.columns], axis=1)
        self._check_columns(X)
        if len(X) == 0:
            return np.empty(0, dtype=np.float64)
        windows = self._windows(self._apply_scaling(X))
        device = torch.device(self.device_)
        layout = torch.from_numpy(windows.padded).to(device)
        first = torch.from_numpy(windows.starts).to(device)
        steps = torch.arange(self.window, device=device)
        wanted = (torch.arange(len(windows)) if positions is None
                  else torch.from_numpy(np.asarray(positions, dtype=np.int64))).to(device)
        if len(wanted) == 0:
            return np.empty(0, dtype=np.float64)
        self.network_.eval()
        out = []
        with torch.no_grad(), _threads(self.num_threads):
            for rows in torch.split(wanted, PREDICT_BATCH_ROWS):
                out.append(self.network_(layout[first[rows].unsqueeze(1) + steps]).cpu().numpy())
        return np.concatenate(out).astype(np.float64) * self.target_std_ + self.target_mean_

    # --- explanations ----------------------------------------------------------------------------

    def contributions(self, X: pd.DataFrame, *, threads: int | None = None, positions: np.ndarray | None = None,
                      steps: int = IG_STEPS) -> pd.DataFrame:
        """Integrated-gradients attributions (Sundararajan et al., 2017) of the rows at ``positions``
        of ``X`` (all when None), each windowed over ``X`` as :meth:`predict_positions` windows it.

        The reference of a row is its own window with every feature at the training mean (0 after
        the standardization) and the mask channel unchanged, so the mask gets nothing and
        ``base_value`` is the score of an average history of the same length. A feature's
        attribution is summed over the window's steps. The path integral is the midpoint rule on
        ``steps`` points: base value plus attributions equal the prediction up to that rule's error
        (the completeness axiom), which the additivity check measures. Gradients, not sampling: the
        values are deterministic. (SHAP's DeepExplainer does not support ``nn.LSTM``; its
        GradientExplainer is this integral averaged over sampled references, noisier for the same
        cost.)"""
        self._check_fitted()
        _check_panel_index(X, "X")
        X = X.set_axis([str(c) for c in X.columns], axis=1)
        self._check_columns(X)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps!r}")
        windows = self._windows(self._apply_scaling(X))
        wanted = np.arange(len(windows)) if positions is None else np.asarray(positions, dtype=np.int64)
        n_features = len(self.feature_names_)
        device = torch.device(self.device_)
        layout = torch.from_numpy(windows.padded).to(device)
        first = torch.from_numpy(windows.starts).to(device)
        offsets = torch.arange(self.window, device=device)
        alphas = (torch.arange(steps, dtype=torch.float32, device=device) + 0.5) / steps
        attributions = np.zeros((len(wanted), n_features), dtype=np.float64)
        base = np.zeros(len(wanted), dtype=np.float64)
        network = self.network_.eval()
        # cuDNN's recurrent kernels have no backward in eval mode: the plain kernels on a GPU.
        cudnn_off = torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else contextlib.nullcontext()
        with _threads(threads or self.num_threads), cudnn_off:
            for chunk in np.array_split(np.arange(len(wanted)), max(1, int(np.ceil(len(wanted) / IG_BATCH_ROWS)))):
                if len(chunk) == 0:
                    continue
                rows = torch.from_numpy(wanted[chunk]).to(device)
                x = layout[first[rows].unsqueeze(1) + offsets]
                reference = x.clone()
                reference[..., :n_features] = 0.0
                delta = x - reference
                total = torch.zeros_like(x)
                for alpha in alphas:
                    point = (reference + alpha * delta).requires_grad_(True)
                    grad, = torch.autograd.grad(network(point).sum(), point)
                    total += grad
                with torch.no_grad():
                    base[chunk] = network(reference).double().cpu().numpy()
                attributions[chunk] = (delta * total / steps)[..., :n_features].sum(dim=1).double().cpu().numpy()
        frame = pd.DataFrame(attributions * self.target_std_, index=X.index[wanted], columns=self.feature_names_)
        frame["base_value"] = base * self.target_std_ + self.target_mean_
        return frame

    # --- persistence ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.network_.state_dict().items()}
        torch.save(state, folder / STATE_FILE)
        meta = {
            "family": self.family,
            "params": self.get_params(),
            "feature_names": self.feature_names_,
            "feature_mean": [float(v) for v in self.feature_mean_],
            "feature_std": [float(v) for v in self.feature_std_],
            "target_mean": self.target_mean_,
            "target_std": self.target_std_,
            "best_epoch": self.best_epoch_,
            "n_epochs": self.n_epochs_,
            "history": self.history_,
            "incremental_updates": int(getattr(self, "incremental_updates_", 0)),
        }
        if hasattr(self, "target_clip_"):
            meta["target_clip"] = [float(v) for v in self.target_clip_]
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        self._save_scaling(folder)
        return folder / STATE_FILE

    @classmethod
    def load(cls, path: str | Path) -> Self:
        folder = Path(path)
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("family") != cls.family:
            raise ValueError(f"{folder} holds a {meta.get('family')!r} model, not {cls.family!r}")
        params = dict(meta["params"])
        params["device"] = "cpu"  # a model trained on a GPU must still load on a CPU-only prediction host
        model = cls(**params)
        model.feature_names_ = list(meta["feature_names"])
        model.feature_mean_ = np.asarray(meta["feature_mean"], dtype=np.float64)
        model.feature_std_ = np.asarray(meta["feature_std"], dtype=np.float64)
        model.target_mean_ = float(meta["target_mean"])
        model.target_std_ = float(meta["target_std"])
        model.best_epoch_ = int(meta["best_epoch"])
        model.n_epochs_ = int(meta["n_epochs"])
        model.history_ = meta["history"]
        model.incremental_updates_ = int(meta.get("incremental_updates", 0))
        if "target_clip" in meta:
            model.target_clip_ = tuple(float(v) for v in meta["target_clip"])
        model._restore_scaling(folder, meta["params"])
        network = model._network()
        network.load_state_dict(torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu"))
        network.eval()
        model.network_ = network
        model.device_ = "cpu"
        return model


class LSTMModel(SequenceModel):
    family = "lstm"
    cell = "lstm"


class GRUModel(SequenceModel):
    family = "gru"
    cell = "gru"
