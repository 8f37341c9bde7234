// moekit._eager: the eager entry points of the ops an eager decode step calls once a layer, their
// Python arguments read here in C instead of by torch.ops' schema parser (about 0.2 us an
// argument: moe_mlp has 17). Each reads its arguments and calls the op through the dispatcher,
// below the Autograd key, exactly as the Python wrapper's torch.ops call would, or returns
// NotImplemented where the wrapper's general path must take the call: an argument of another
// kind than the plain one (a tensor subclass, a non-tuple weight, a bool for an int, x not 2-D),
// autograd to record (grad mode on and a tensor requiring grad), or a torch function mode. The
// general path then checks, errs or records as it always does: nothing here decides an error.
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <optional>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// A plain tensor (torch.Tensor or nn.Parameter, whose __torch_function__ is torch's own), or
// None where `optional`; false for anything else.
bool read_tensor(PyObject* obj, bool optional, OptTensor& out) {
  if (obj == Py_None) return optional;
  if (!THPVariable_CheckExact(obj)) return false;
  out = THPVariable_Unpack(obj);
  return true;
}

// An MXFP4 or float expert weight as moekit.ops._split_weights reads it: a tensor, or a tuple
// or list of (blocks, scales) or (blocks, scales, codes, slab_scales).
bool read_weights(PyObject* obj, std::array<OptTensor, 4>& parts) {
  if (!PyTuple_CheckExact(obj) && !PyList_CheckExact(obj)) return read_tensor(obj, false, parts[0]);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
  if (n != 2 && n != 4) return false;
  PyObject** items = PySequence_Fast_ITEMS(obj);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (!read_tensor(items[i], i > 0, parts[static_cast<size_t>(i)])) return false;
  }
  return true;
}

bool read_int(PyObject* obj, int64_t& out) {
  if (!PyLong_CheckExact(obj)) return false;  // a bool is not an exact int
  int overflow = 0;
  out = PyLong_AsLongLongAndOverflow(obj, &overflow);
  return overflow == 0 && !(out == -1 && PyErr_Occurred());
}

bool read_float(PyObject* obj, double& out) {
  if (PyFloat_CheckExact(obj)) {
    out = PyFloat_AS_DOUBLE(obj);
    return true;
  }
  if (!PyLong_CheckExact(obj)) return false;
  out = PyLong_AsDouble(obj);
  if (out == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();  // too large for a double: the general path says so
    return false;
  }
  return true;
}

bool records_autograd(std::initializer_list<const OptTensor*> tensors) {
  if (!c10::GradMode::is_enabled()) return false;
  for (const OptTensor* t : tensors) {
    if (t->has_value() && (*t)->requires_grad()) return true;
  }
  return false;
}

// The GIL released for the op's run, as torch.ops releases it: other Python threads (a rank a
// thread, another GPU's layer) go on meanwhile.
class WithoutGil {
 public:
  WithoutGil() : state_(PyEval_SaveThread()) {}
  ~WithoutGil() { PyEval_RestoreThread(state_); }
  WithoutGil(const WithoutGil&) = delete;
  WithoutGil& operator=(const WithoutGil&) = delete;

 private:
  PyThreadState* state_;
};

using MoeMlpOp = Tensor(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const OptTensor&,
                        const OptTensor&, const Tensor&, const OptTensor&, const OptTensor&, int64_t, double, double,
                        const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool);

// moe_mlp(x, gate_weight, gate_bias, mlp1_weight, mlp1_bias, mlp2_weight, mlp2_bias,
//         experts_per_token, swiglu_alpha, swiglu_limit, batch_invariant), as moekit.moe_mlp takes
// them; x [T, H].
PyObject* moe_mlp(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 11) {
    PyErr_Format(PyExc_TypeError, "moekit._eager.moe_mlp: expected 11 arguments, got %zd", nargs);
    return nullptr;
  }
  OptTensor x, gate_weight, gate_bias, mlp1_bias, mlp2_bias;
  std::array<OptTensor, 4> w1, w2;
  int64_t k = 0;
  double alpha = 0, limit = 0;
  const bool plain = read_tensor(args[0], false, x) && read_tensor(args[1], false, gate_weight) &&
                     read_tensor(args[2], true, gate_bias) && read_weights(args[3], w1) &&
                     read_tensor(args[4], true, mlp1_bias) && read_weights(args[5], w2) &&
                     read_tensor(args[6], true, mlp2_bias) && read_int(args[7], k) && read_float(args[8], alpha) &&
                     read_float(args[9], limit) && PyBool_Check(args[10]);
  if (!plain || x->dim() != 2 || at::impl::torch_function_mode_enabled() ||
      records_autograd({&x, &gate_weight, &gate_bias, &w1[0], &mlp1_bias, &w2[0], &mlp2_bias})) {
    PyErr_Clear();
    Py_RETURN_NOTIMPLEMENTED;
  }
  const bool batch_invariant = args[10] == Py_True;
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("moekit::moe_mlp", "").typed<MoeMlpOp>();
  Tensor y;
  {
    const WithoutGil released;
    const at::AutoDispatchBelowAutograd below_autograd;
    y = op.call(*x, *gate_weight, gate_bias, *w1[0], w1[1], mlp1_bias, *w2[0], w2[1], mlp2_bias, k, alpha, limit,
                w1[2], w1[3], w2[2], w2[3], batch_invariant);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"moe_mlp", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&moe_mlp)), METH_FASTCALL,
     "moekit.moe_mlp's eager call, or NotImplemented where its general path must take it"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_eager", "moekit's eager entry points (python/csrc/eager_calls.cpp)",
                      -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__eager() { return PyModule_Create(&module); }
