"""What numba lacks for threads that share memory without the GIL: atomic loads, stores and
compare-and-swap on int64 slots, the CPU's spin-wait hint, and calls through a C function pointer.

A slot is addressed as (address of an int64 array, index): the team's control block (`team.py`) is
such an array. Compiled code that numba caches on disk takes addresses as arguments, or as a symbol
the linker resolves in each process (`symbol_address`), never as constants: they move from process
to process. The loads and stores are sequentially
consistent: a worker that announces it is going to sleep and a caller that publishes work each
store, then load the other's slot, so at least one of them sees the other (Dekker's handshake).
"""

from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.extending import intrinsic

_I64, _I32, _VOID, _BYTES = ir.IntType(64), ir.IntType(32), ir.VoidType(), ir.IntType(8).as_pointer()


def _slot(builder, address, index):
    return builder.gep(builder.inttoptr(address, _I64.as_pointer()), [index])


def _function(builder, address, result, arguments):
    return builder.inttoptr(address, ir.FunctionType(result, arguments).as_pointer())


@intrinsic
def load(typingctx, address, index):
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_slot(builder, *args), "seq_cst", 8)
    return types.int64(types.int64, types.int64), codegen


@intrinsic
def store(typingctx, address, index, value):
    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _slot(builder, args[0], args[1]), "seq_cst", 8)
        return context.get_dummy_value()
    return types.none(types.int64, types.int64, types.int64), codegen


@intrinsic
def swap(typingctx, address, index, expected, new):
    """Compare-and-swap: 1 if the slot held `expected` and now holds `new`, else 0."""
    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(_slot(builder, args[0], args[1]), args[2], args[3], "seq_cst", "seq_cst")
        return builder.zext(builder.extract_value(pair, 1), _I64)
    return types.int64(types.int64, types.int64, types.int64, types.int64), codegen


@intrinsic
def pause(typingctx):
    """x86's PAUSE (a spinning core yields to its sibling and saves power); nothing elsewhere."""
    def codegen(context, builder, signature, args):
        if "x86" in builder.module.triple or "i686" in builder.module.triple:
            hint = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=ir.FunctionType(_VOID, []))
            builder.call(hint, [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def call_job(typingctx, address, job, data, extra):
    """OpenBLAS's job routine: void (*)(int job, void *data, int extra)."""
    def codegen(context, builder, signature, args):
        target = _function(builder, args[0], _VOID, [_I32, _BYTES, _I32])
        builder.call(target, [builder.trunc(args[1], _I32), builder.inttoptr(args[2], _BYTES),
                              builder.trunc(args[3], _I32)])
        return context.get_dummy_value()
    return types.none(types.int64, types.int64, types.int64, types.int64), codegen


@intrinsic
def call_pointer(typingctx, address, argument):
    """A C function of one pointer returning an int (sem_wait, sem_post)."""
    def codegen(context, builder, signature, args):
        target = _function(builder, args[0], _I32, [_BYTES])
        builder.call(target, [builder.inttoptr(args[1], _BYTES)])
        return context.get_dummy_value()
    return types.none(types.int64, types.int64), codegen


@intrinsic
def call_self(typingctx, address):
    """A C function of no arguments returning an unsigned long (pthread_self)."""
    def codegen(context, builder, signature, args):
        return builder.call(_function(builder, args[0], _I64, []), [])
    return types.int64(types.int64), codegen


@intrinsic
def call_fallback(typingctx, address, routine, jobs, size, data, extra):
    """The Python fallback for BLAS's jobs: void (*)(void *routine, int jobs, size_t size,
    void *data, int extra)."""
    def codegen(context, builder, signature, args):
        target = _function(builder, args[0], _VOID, [_BYTES, _I32, _I64, _BYTES, _I32])
        builder.call(target, [builder.inttoptr(args[1], _BYTES), builder.trunc(args[2], _I32), args[3],
                              builder.inttoptr(args[4], _BYTES), builder.trunc(args[5], _I32)])
        return context.get_dummy_value()
    return (types.none(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64),
            codegen)


@intrinsic
def symbol_address(typingctx, name):
    """The address of an external symbol (registered with llvmlite's `add_symbol`), resolved when
    the code is linked: code cached on disk can hold it where it could not hold the address."""
    if not isinstance(name, types.StringLiteral):
        return None  # numba then types the call again with the name as a literal
    symbol = name.literal_value

    def codegen(context, builder, signature, args):
        module = builder.module
        variable = module.globals.get(symbol) or ir.GlobalVariable(module, _I64, name=symbol)
        variable.linkage = "external"
        return builder.ptrtoint(variable, _I64)
    return types.int64(name), codegen


@intrinsic
def address_of(typingctx, pointer):
    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], _I64)
    return types.int64(types.voidptr), codegen


@intrinsic
def pointer_at(typingctx, address):
    """The integer `address` as a void pointer (what `numba.carray` takes with a dtype)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], _BYTES)
    return types.voidptr(types.int64), codegen


@intrinsic
def call_gemm(typingctx, address, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """CBLAS's row-major c = alpha * a @ b + beta * c of an ILP64 build (64-bit sizes), float32 or
    float64 by alpha's type: void (*)(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta,
    c, ldc), the matrices' addresses as integers."""
    if alpha not in (types.float32, types.float64) or beta != alpha:
        return None

    def codegen(context, builder, signature, args):
        real = ir.FloatType() if alpha == types.float32 else ir.DoubleType()
        pointer = real.as_pointer()
        target = _function(builder, args[0], _VOID, [_I32, _I32, _I32, _I64, _I64, _I64, real, pointer, _I64,
                                                     pointer, _I64, real, pointer, _I64])
        row_major, no_transpose = ir.Constant(_I32, 101), ir.Constant(_I32, 111)
        m_, n_, k_, alpha_, a_, lda_, b_, ldb_, beta_, c_, ldc_ = args[1:]
        builder.call(target, [row_major, no_transpose, no_transpose, m_, n_, k_, alpha_,
                              builder.inttoptr(a_, pointer), lda_, builder.inttoptr(b_, pointer), ldb_, beta_,
                              builder.inttoptr(c_, pointer), ldc_])
        return context.get_dummy_value()
    return types.none(types.int64, types.int64, types.int64, types.int64, alpha, types.int64, types.int64,
                      types.int64, types.int64, beta, types.int64, types.int64), codegen
