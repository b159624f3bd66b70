"""What numba lacks for threads that share memory without the GIL: atomic loads, stores and
compare-and-swap on int64 slots, the CPU's spin-wait hint, and calls through a C function pointer.

A slot is addressed as (address of an int64 array, index): the team's control block (`team.py`) is
an array whose address compiled code holds as a constant. The loads and stores are sequentially
consistent: a worker that announces it is going to sleep and a caller that publishes work each
store, then load the other's slot, so at least one of them sees the other (Dekker's handshake).
"""

from __future__ import annotations

_compiled: dict[str, object] = {}


def intrinsics() -> dict[str, object]:
    """The intrinsics, built at first use (numba imported only then)."""
    if _compiled:
        return _compiled
    import llvmlite.ir as ir
    from numba import types
    from numba.extending import intrinsic

    i64, i32, void, byte_pointer = ir.IntType(64), ir.IntType(32), ir.VoidType(), ir.IntType(8).as_pointer()

    def slot(builder, address, index):
        return builder.gep(builder.inttoptr(address, i64.as_pointer()), [index])

    def function(builder, address, result, arguments):
        return builder.inttoptr(address, ir.FunctionType(result, arguments).as_pointer())

    @intrinsic
    def load(typingctx, address, index):
        def codegen(context, builder, signature, args):
            return builder.load_atomic(slot(builder, *args), "seq_cst", 8)
        return types.int64(types.int64, types.int64), codegen

    @intrinsic
    def store(typingctx, address, index, value):
        def codegen(context, builder, signature, args):
            builder.store_atomic(args[2], slot(builder, args[0], args[1]), "seq_cst", 8)
            return context.get_dummy_value()
        return types.none(types.int64, types.int64, types.int64), codegen

    @intrinsic
    def swap(typingctx, address, index, expected, new):
        """Compare-and-swap: 1 if the slot held `expected` and now holds `new`, else 0."""
        def codegen(context, builder, signature, args):
            pair = builder.cmpxchg(slot(builder, args[0], args[1]), args[2], args[3], "seq_cst", "seq_cst")
            return builder.zext(builder.extract_value(pair, 1), i64)
        return types.int64(types.int64, types.int64, types.int64, types.int64), codegen

    @intrinsic
    def pause(typingctx):
        """x86's PAUSE (a spinning core yields to its sibling and saves power); nothing elsewhere."""
        def codegen(context, builder, signature, args):
            if "x86" in builder.module.triple or "i686" in builder.module.triple:
                hint = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=ir.FunctionType(void, []))
                builder.call(hint, [])
            return context.get_dummy_value()
        return types.none(), codegen

    @intrinsic
    def call_job(typingctx, address, job, data, extra):
        """OpenBLAS's job routine: void (*)(int job, void *data, int extra)."""
        def codegen(context, builder, signature, args):
            target = function(builder, args[0], void, [i32, byte_pointer, i32])
            builder.call(target, [builder.trunc(args[1], i32), builder.inttoptr(args[2], byte_pointer),
                                  builder.trunc(args[3], i32)])
            return context.get_dummy_value()
        return types.none(types.int64, types.int64, types.int64, types.int64), codegen

    @intrinsic
    def call_pointer(typingctx, address, argument):
        """A C function of one pointer returning an int (sem_wait, sem_post)."""
        def codegen(context, builder, signature, args):
            target = function(builder, args[0], i32, [byte_pointer])
            builder.call(target, [builder.inttoptr(args[1], byte_pointer)])
            return context.get_dummy_value()
        return types.none(types.int64, types.int64), codegen

    @intrinsic
    def call_self(typingctx, address):
        """A C function of no arguments returning an unsigned long (pthread_self)."""
        def codegen(context, builder, signature, args):
            return builder.call(function(builder, args[0], i64, []), [])
        return types.int64(types.int64), codegen

    @intrinsic
    def call_fallback(typingctx, address, routine, jobs, size, data, extra):
        """The Python fallback for BLAS's jobs: void (*)(void *routine, int jobs, size_t size,
        void *data, int extra)."""
        def codegen(context, builder, signature, args):
            target = function(builder, args[0], void, [byte_pointer, i32, i64, byte_pointer, i32])
            builder.call(target, [builder.inttoptr(args[1], byte_pointer), builder.trunc(args[2], i32), args[3],
                                  builder.inttoptr(args[4], byte_pointer), builder.trunc(args[5], i32)])
            return context.get_dummy_value()
        return (types.none(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64),
                codegen)

    @intrinsic
    def address_of(typingctx, pointer):
        def codegen(context, builder, signature, args):
            return builder.ptrtoint(args[0], i64)
        return types.int64(types.voidptr), codegen

    _compiled.update(load=load, store=store, swap=swap, pause=pause, call_job=call_job,
                     call_pointer=call_pointer, call_self=call_self, call_fallback=call_fallback,
                     address_of=address_of)
    return _compiled
