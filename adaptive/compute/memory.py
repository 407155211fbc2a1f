"""Device memory of a compiled inference function: what a `memory_mb` budget is checked against.

XLA's `compiled.memory_analysis()` gives the buffers the executable allocates: its arguments,
outputs and temporaries. Weights baked into the function as constants are not among them, so
they are added at their stored size (`weight_bytes`, at the chosen precision). The sum is what
one call holds at most; XLA's own `peak_memory_in_bytes` is not used, since on XLA:CPU it can
come out below the temporaries the executable must hold.
"""

from __future__ import annotations

MB = 1024.0 * 1024.0


def memory_report(compiled, weight_bytes: int) -> dict:
    """{arguments, outputs, temporaries, weights, total} in bytes and `total_mb`, for a compiled
    function (`jax.jit(f).lower(...).compile()`) whose weights take `weight_bytes`."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise ValueError("this backend reports no memory analysis for compiled functions")
    parts = {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "temporaries": int(stats.temp_size_in_bytes),
        "weights": int(weight_bytes),
    }
    # An output aliasing an argument (a donated buffer) is one allocation, not two.
    total = sum(parts.values()) - int(stats.alias_size_in_bytes)
    return {**parts, "total": total, "total_mb": round(total / MB, 4)}
