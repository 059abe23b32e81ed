"""The yardstick and the peers: the plain NumPy loss + gradient, and other
libraries' (torch, JAX, scikit-learn), each imported only when asked for.

Part of :mod:`fastxent.bench`, which re-exports the public names: import
them from there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

LossGrad = Callable[[], object]


# ------------------------------------------------------------------ yardsticks


def numpy_loss_grad(z: NDArray[Any], y: NDArray[Any]) -> tuple[Any, NDArray[Any]]:
    """Mean softmax cross-entropy and its gradient, the plain NumPy way.

    .. math::

        \\ell = \\frac{1}{n} \\sum_i \\Big(\\log \\sum_j e^{z_{ij}} - z_{i y_i}\\Big),
        \\qquad
        \\frac{\\partial \\ell}{\\partial z_{ij}}
        = \\frac{\\mathrm{softmax}(z_i)_j - [j = y_i]}{n}

    In the dtype of ``z`` (float64 in, float64 out: the self-check's
    reference), with in-place operations where an ordinary user would write
    them: max, shift, exp, sum, log, then ``(softmax - onehot) / n``.  One
    thread (NumPy's ufuncs do not thread).

    Parameters
    ----------
    z : numpy.ndarray, shape (n, m)
        Logits, float32 or float64.
    y : numpy.ndarray of int, shape (n,)
        Class indices in ``0 .. m-1``.

    Returns
    -------
    loss : numpy scalar
        The mean loss, in ``z``'s dtype.
    grad : numpy.ndarray, shape (n, m)
        Its gradient with respect to ``z``, in ``z``'s dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from fastxent.bench import numpy_loss_grad
    >>> loss, grad = numpy_loss_grad(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(float(loss), 6), grad[0]
    (1.386294, array([-0.375,  0.125,  0.125,  0.125]))
    """
    n = z.shape[0]
    rows = np.arange(n)
    zmax = z.max(axis=1, keepdims=True)
    p = z - zmax
    np.exp(p, out=p)
    s = p.sum(axis=1, keepdims=True)
    lse = np.log(s[:, 0]) + zmax[:, 0]
    loss = np.mean(lse - z[rows, y])
    p /= s * n
    p[rows, y] -= z.dtype.type(1.0 / n)
    return loss, p


# ------------------------------------------------------------------------ peers


@dataclass(frozen=True)
class Peer:
    """A library whose loss + gradient the benchmarks set beside fastxent's.

    Parameters
    ----------
    name : str
        The name ``--compare`` and the benchmark records use.
    module : str
        What to import to tell whether it is installed.
    install : str
        The command that installs it.
    build : callable
        ``build(z, y, threads, out)`` imports the library and returns a
        callable of no arguments that computes the mean loss and the
        gradient of ``z`` for labels ``y`` on ``threads`` threads
        (``out``: a gradient buffer, used by peers that write into one).
    per_call_threads : bool
        Whether its thread count can be set per call (JAX's is fixed at
        start-up: timed once per shape and dtype).
    preallocated : bool
        Whether it writes into a preallocated gradient (compared with
        fastxent's ``out=``; the others with fastxent allocating).
    """

    name: str
    module: str
    install: str
    build: Callable[[NDArray[Any], NDArray[Any], int, NDArray[Any] | None], LossGrad]
    per_call_threads: bool = True
    preallocated: bool = False


def _torch(z: NDArray[Any], y: NDArray[Any], threads: int, out: NDArray[Any] | None) -> LossGrad:
    torch = importlib.import_module("torch")
    F = importlib.import_module("torch.nn.functional")
    yt = torch.from_numpy(y.astype(np.int64))
    # A global setting: set once here, right before the callable is timed.
    torch.set_num_threads(threads)

    def run() -> object:
        zt = torch.from_numpy(z).requires_grad_(True)
        loss = F.cross_entropy(zt, yt)
        loss.backward()
        return loss, zt.grad

    return run


def _sklearn(z: NDArray[Any], y: NDArray[Any], threads: int, out: NDArray[Any] | None) -> LossGrad:
    loss_module = importlib.import_module("sklearn._loss.loss")
    loss_fn = loss_module.HalfMultinomialLoss(n_classes=z.shape[1])
    yf = y.astype(z.dtype)
    loss_out = np.empty(z.shape[0], dtype=z.dtype)
    grad_out = np.empty_like(z) if out is None else out

    def run() -> object:
        losses, grad = loss_fn.loss_gradient(
            y_true=yf, raw_prediction=z, loss_out=loss_out, gradient_out=grad_out, n_threads=threads
        )
        return losses.mean(), grad

    return run


def _jax(z: NDArray[Any], y: NDArray[Any], threads: int, out: NDArray[Any] | None) -> LossGrad:
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    jax.config.update("jax_enable_x64", True)  # float64 stays float64

    def mean_xent(zj: Any, yj: Any) -> Any:
        logp = jax.nn.log_softmax(zj, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, yj[:, None], axis=-1))

    value_and_grad = jax.jit(jax.value_and_grad(mean_xent))
    zj, yj = jax.device_put(z), jax.device_put(y)

    def run() -> object:
        return jax.block_until_ready(value_and_grad(zj, yj))

    run()  # compile now, so that no warm-up call of a timing is the compilation
    return run


#: The peers, by name: torch (``F.cross_entropy`` + ``backward``), JAX
#: (``jit(value_and_grad(...))``) and scikit-learn
#: (``HalfMultinomialLoss.loss_gradient``, per-sample gradient).
PEERS: dict[str, Peer] = {
    "torch": Peer("torch", "torch", "pip install torch", _torch),
    "jax": Peer("jax", "jax", "pip install jax", _jax, per_call_threads=False),
    "sklearn": Peer("sklearn", "sklearn", "pip install scikit-learn", _sklearn, preallocated=True),
}


def _peer(name: str) -> Peer:
    try:
        return PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}.") from None


def peer_version(name: str) -> str | None:
    """The installed version of a peer, or None when it cannot be imported.

    Parameters
    ----------
    name : str
        A key of ``PEERS``.

    Returns
    -------
    str or None
        Its ``__version__`` (``"?"`` when it has none).

    Raises
    ------
    ValueError
        If ``name`` is not a peer.

    Examples
    --------
    >>> from fastxent.bench import peer_version
    >>> v = peer_version("sklearn")  # None without scikit-learn
    """
    peer = _peer(name)
    try:
        mod = importlib.import_module(peer.module)
    except Exception:  # noqa: BLE001 - a broken install may raise anything: skip the peer
        return None
    return str(getattr(mod, "__version__", "?"))


def missing_peer_note(name: str) -> str | None:
    """Why a peer cannot run here and how to install it, or None if it can.

    Parameters
    ----------
    name : str
        A key of ``PEERS``.

    Returns
    -------
    str or None
        For example ``"torch is not installed (pip install torch)"``.

    Raises
    ------
    ValueError
        If ``name`` is not a peer.

    Examples
    --------
    >>> from fastxent.bench import missing_peer_note
    >>> note = missing_peer_note("jax")  # None where JAX is installed
    """
    if peer_version(name) is not None:
        return None
    return f"{name} is not installed ({PEERS[name].install})"


def peer_loss_grad(
    name: str,
    z: NDArray[Any],
    y: NDArray[Any],
    *,
    threads: int = 1,
    out: NDArray[Any] | None = None,
) -> LossGrad:
    """A callable computing a peer's mean loss and gradient of ``z``.

    The peer is imported here, not before.  torch's thread count is a
    global setting: this sets it, so build the callable right before timing
    it (and restore ``torch.set_num_threads`` afterwards if it matters).
    JAX's function is compiled here, so the callable's first call is not
    the compilation.

    Parameters
    ----------
    name : str
        A key of ``PEERS``.
    z : numpy.ndarray, shape (n, m)
        Logits, float32 or float64 (JAX runs float64 with ``jax_enable_x64``).
    y : numpy.ndarray of int, shape (n,)
        Labels.
    threads : int, default 1
        The peer's thread count (ignored by JAX: see :class:`Peer`).
    out : numpy.ndarray, optional
        Gradient buffer for the peers that write into one (scikit-learn).

    Returns
    -------
    callable
        No arguments; returns the peer's ``(loss, gradient)`` in its own
        types (scikit-learn's gradient is per sample: not divided by n).

    Raises
    ------
    ValueError
        If ``name`` is not a peer.
    ImportError
        If the peer is not installed; the message says how to install it.

    Examples
    --------
    >>> from fastxent.bench import make_case, missing_peer_note, peer_loss_grad
    >>> z, y = make_case(16, 4)
    >>> if missing_peer_note("sklearn") is None:
    ...     loss, grad = peer_loss_grad("sklearn", z, y)()
    """
    peer = _peer(name)
    note = missing_peer_note(name)
    if note is not None:
        raise ImportError(f"peer {note}")
    return peer.build(z, y, threads, out)
