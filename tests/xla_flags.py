"""How the suite compiles: its XLA flags, and the compiler options that restore the command line's emitters for
the tests whose bitwise claims depend on how XLA fuses floating-point arithmetic."""

# XLA's backend optimisations off and its older loop emitters instead of the MLIR fusion emitters (which build an
# MLIR pipeline for every fusion; the results are the same functions, rounded the same way the tests check), and
# YNNPACK off, as the command line sets it.
SUITE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false --xla_cpu_experimental_ynn_fusion_type="
)

# With the loop emitters a value computed in a fused loop can differ in its last bit with where it sits in the loop
# (seen: the view pool fused with a multiply-add producer, a padded batch's warp): claims that permuting or padding
# the inputs moves the outputs bit for bit are tested with the fusion emitters the command line compiles with
# (``jax.jit(..., compiler_options=COMMAND_LINE_EMITTERS)``).
COMMAND_LINE_EMITTERS = {"xla_cpu_use_fusion_emitters": True}
