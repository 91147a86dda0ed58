"""Refuse concurrent use of one model or optimizer from several Python threads.

fit, evaluate, predict and Optimizer.step take a guard on the objects they read or change
(the model, the optimizer, and the flat parameter arrays, which views and other models may
share) for their whole duration. The guards never block: a call that finds an object in use
by another thread raises RuntimeError at once, before it changes anything, and the first call
finishes undisturbed.

- ``exclusive`` (fit, Optimizer.step): no other thread may use the objects.
- ``shared`` (evaluate, predict): other threads may evaluate or predict at the same time when
  the model is in evaluation mode (``model.eval()``); in training mode predict switches the
  layers' modes for its duration, which another thread would see, so it is refused.

A thread may nest calls (fit calls predict and Optimizer.step itself).
"""
import functools
import threading
import weakref

_lock = threading.Lock()
_guards = {}   # id(object) -> _Guard, removed when the object dies


class _Guard:
    __slots__ = ("holders",)

    def __init__(self):
        self.holders = {}   # thread ident -> [kind, toggles, depth, what]


def _guard(obj):
    g = _guards.get(id(obj))
    if g is None:
        g = _guards[id(obj)] = _Guard()
        weakref.finalize(obj, _guards.pop, id(obj), None)
    return g


def _conflict(guard, me, kind, toggles):
    for ident, (k, t, _, what) in guard.holders.items():
        if ident == me:
            continue
        if kind == "exclusive" or k == "exclusive":
            return what
        if toggles or t:
            return what
    return None


class guarded:
    """``with guarded(objects, kind, what, toggles=False):`` holds the guards of objects (kind
    "exclusive" or "shared") while the block runs; entering raises RuntimeError naming what
    (the caller) and the other thread's call on a conflict, before the block runs."""

    __slots__ = ("objects", "kind", "what", "toggles", "guards", "me")

    def __init__(self, objects, kind, what, toggles=False, guards=None):
        self.objects, self.kind, self.what, self.toggles = objects, kind, what, toggles
        self.guards = guards

    def __enter__(self):
        me = threading.get_ident()
        kind, toggles = self.kind, self.toggles
        with _lock:
            guards = self.guards
            if guards is None:
                guards = self.guards = guards_of(self.objects)
            for g in guards:
                if g.holders and (len(g.holders) > 1 or me not in g.holders):
                    other = _conflict(g, me, kind, toggles)
                    if other is not None:
                        raise RuntimeError(self._message(other))
            for g in guards:
                h = g.holders.get(me)
                if h is None:
                    g.holders[me] = [kind, toggles, 1, self.what]
                else:
                    h[2] += 1
        self.me = me
        return self

    def __exit__(self, *exc):
        me = self.me
        with _lock:
            for g in self.guards:
                h = g.holders[me]
                h[2] -= 1
                if h[2] == 0:
                    del g.holders[me]
        return False

    def _message(self, other):
        if self.kind == "shared" and not other.startswith(("fit", "Opt")) \
                and "." not in other:
            hint = ("a model may be evaluated or predicted from several threads at once only "
                    "in evaluation mode (model.eval()) and while no thread trains it")
        else:
            hint = ("train a model (fit, Optimizer.step) from one thread at a time; give each "
                    "thread its own model and optimizer")
        return (f"{self.what}: the model or optimizer is in use by {other} in another "
                f"thread; {hint}")


def guards_of(objects):
    """The guards of these objects, each once (call with _lock held, or before any thread
    can use the objects)."""
    guards = {}
    for obj in objects:
        g = _guards.get(id(obj)) or _guard(obj)
        guards[id(g)] = g
    return list(guards.values())


def model_objects(model):
    """The model and its parameters' storage (flat buffers, or lone parameters)."""
    out = {id(model): model}
    for p in model.parameters():
        key = p._buffer.data if p._buffer is not None else p
        out[id(key)] = key
    return list(out.values())


def training(model):
    """Whether predict would switch any layer's mode (some module is in training mode)."""
    return any(m.training for m in model.modules())


def param_key(p):
    """What identifies a parameter's storage: its flat buffer's array, or itself."""
    return p._buffer.data if p._buffer is not None else p


def for_training(f):
    """Decorator of fit(model, loss, optimizer, ...): an exclusive guard on the model, its
    parameters' storage and the optimizer for the call."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from .nn import Module
        model = args[0] if args else kwargs.get("model")
        optimizer = args[2] if len(args) > 2 else kwargs.get("optimizer")
        if not isinstance(model, Module):
            return f(*args, **kwargs)       # f raises its TypeError
        with guarded(model_objects(model) + [optimizer], "exclusive", f.__name__):
            return f(*args, **kwargs)
    return wrapper


def for_reading(f):
    """Decorator of evaluate(model, ...) and predict(model, ...): a shared guard."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from .nn import Module
        model = args[0] if args else kwargs.get("model", kwargs.get("self"))
        if not isinstance(model, Module):
            return f(*args, **kwargs)
        with guarded(model_objects(model), "shared", f.__name__, training(model)):
            return f(*args, **kwargs)
    return wrapper
