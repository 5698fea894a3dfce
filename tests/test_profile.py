"""The step profiler: instructions parsed from compiled HLO, attributed to layers and kinds of work; oneDNN's own
per-primitive timers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from deepsea.backends import onednn
from deepsea.tools.profile import CATEGORIES, attribute, compiled_ops

# compiled HLO keeps one instruction per line
HLO = """HloModule jit_step

%fused_computation.1 (p: bf16[4]) -> bf16[4] {
  %p = bf16[4]{0} parameter(0)
  ROOT %inner = bf16[4]{0} negate(%p), metadata={op_name="jit(step)/should_not_appear"}
}

ENTRY %main (a: bf16[4], w: f32[3,3,1,1]) -> (f32[3,3,1,1], f32[]) {
  %a = bf16[4]{0} parameter(0)
  %w = f32[3,3,1,1]{3,2,1,0} parameter(1)
  %ffi_call.1 = bf16[4]{0} custom-call(%a, %w), custom_call_target="deepsea_conv_fwd_bf16", metadata={op_name="jit(step)/jvp(Net)/conv0/cond/branch_0_fun/ffi_call"}
  %select_fusion = bf16[4]{0} fusion(%ffi_call.1), kind=kLoop, calls=%fused_computation.1
  %ffi_call.2 = f32[3,3,1,1]{3,2,1,0} custom-call(%a, %select_fusion), custom_call_target="deepsea_conv_bwd_weights_bf16", metadata={op_name="jit(step)/transpose(jvp(Net))/conv0/cond/branch_0_fun/ffi_call"}
  %convert.3 = f32[4]{0} convert(%ffi_call.1), metadata={op_name="jit(step)/jvp(Net)/conv0/convert_element_type"}
  %t = (f32[3,3,1,1]{3,2,1,0}, f32[]) tuple(%ffi_call.2, %convert.3)
  ROOT %add.9 = f32[] add(%convert.3, %convert.3), metadata={op_name="jit(step)/add"}
}
"""  # noqa: E501


def test_compiled_ops_parses_targets_operands_and_inherits_names():
    ops = compiled_ops(HLO)
    assert "inner" not in ops  # inside a fused computation
    assert ops["ffi_call.2"].target == "deepsea_conv_bwd_weights_bf16"
    assert ops["ffi_call.2"].operands == ("a", "select_fusion")
    assert ops["t"].opcode == "tuple" and ops["t"].operands == ("ffi_call.2", "convert.3")
    # the fusion without metadata takes the op name of the gradient call that consumes it
    assert ops["select_fusion"].op_name.startswith("jit(step)/transpose(jvp(Net))/conv0")


def test_attribute_splits_layers_passes_and_kinds():
    ops = compiled_ops(HLO)
    times = {"ffi_call.1": 2.0, "select_fusion": 0.5, "ffi_call.2": 3.0, "convert.3": 0.25, "add.9": 1.0, "x": 0.1}
    rows = {(r["layer"], r["pass"]): r for r in attribute(ops, times)}
    assert rows[("conv0", "forward")]["onednn_fwd"] == 2.0
    assert rows[("conv0", "forward")]["xla_cast"] == 0.25
    assert rows[("conv0", "backward")]["onednn_kernel_grad"] == 3.0
    assert rows[("conv0", "backward")]["xla_elementwise"] == 0.5
    assert rows[("(loss, optimizer)", "forward")]["total"] == 1.0
    assert rows[("(runtime)", "forward")]["xla_other"] == 0.1
    total = sum(r["total"] for r in rows.values())
    assert total == pytest.approx(sum(times.values()))
    assert all(set(CATEGORIES) <= set(r) for r in rows.values())


@pytest.mark.skipif(not onednn.available(), reason="oneDNN handlers not available here")
def test_primitive_times_count_calls_and_reset():
    onednn.primitive_times(reset=True)
    x = jnp.ones((2, 6, 6, 3), jnp.float32)
    k = jnp.ones((3, 3, 3, 4), jnp.float32)
    grad = jax.jit(jax.value_and_grad(lambda x, k: onednn.conv(x, k).sum(), argnums=(0, 1)))
    jax.block_until_ready(grad(x, k))
    jax.block_until_ready(grad(x, k))
    rows = {r["key"]: r for r in onednn.primitive_times(reset=True)}
    assert rows["conv_fwd f32 2x6x6x3->4 k3x3"]["calls"] == 2
    assert rows["conv_bwd_weights f32 2x6x6x3->4 k3x3"]["calls"] == 2
    assert all(r["exec_ms"] > 0 and r["impl"] for r in rows.values())
    assert onednn.primitive_times() == []


def test_a_wrapper_every_layer_shares_is_looked_through():
    # an orbit average's network is its submodule `inner`: the layers are inner's children; the wrapper's own
    # operations (the average) are the model's
    hlo = HLO.replace("jvp(Net))/conv0/", "jvp(Net))/inner/conv0/").replace("jvp(Net)/conv0/", "jvp(Net)/inner/dense0/")
    hlo = hlo.replace('op_name="jit(step)/add"', 'op_name="jit(step)/jvp(Net)/reduce_sum"')
    hlo = hlo.replace("inner/dense0/convert_element_type", "inner/convert_element_type")  # inner's own
    times = {"ffi_call.1": 1.0, "ffi_call.2": 1.0, "add.9": 1.0, "convert.3": 1.0}
    rows = {(r["layer"], r["pass"]): r["total"] for r in attribute(compiled_ops(hlo), times)}
    assert rows == {("dense0", "forward"): 1.0, ("conv0", "backward"): 1.0, ("(model)", "forward"): 2.0}
