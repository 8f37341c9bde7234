// moekit._eager: the eager entry points of the ops an eager decode step calls once a layer
// (moe_mlp, route, add_rms_norm), their Python arguments read here in C instead of by torch.ops'
// schema parser (about 0.2 us an argument: moe_mlp has 17). Each reads its arguments and calls
// the op through the dispatcher, below the Autograd key, exactly as the Python wrapper's
// torch.ops call would, or returns NotImplemented where the wrapper's general path must take the
// call: an argument of another kind than the plain one (a tensor subclass, a non-tuple weight, a
// bool for an int, a 0-d x), autograd to record (grad mode on and a tensor requiring grad), or
// a torch function mode. The general path then checks, errs or records as it always does:
// nothing here decides an error.
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/accumulate.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <array>
#include <optional>
#include <tuple>
#include <utility>

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

// Whether the entry was given its count of arguments; else a TypeError is set.
bool arity(const char* entry, Py_ssize_t nargs, Py_ssize_t want) {
  if (nargs == want) return true;
  PyErr_Format(PyExc_TypeError, "moekit._eager.%s: expected %zd arguments, got %zd", entry, want, nargs);
  return false;
}

// Whether the wrapper's general path must take a call whose arguments `plain` says were read.
bool general_path(bool plain, std::initializer_list<const OptTensor*> differentiable) {
  return !plain || at::impl::torch_function_mode_enabled() || records_autograd(differentiable);
}

PyObject* not_implemented() {
  PyErr_Clear();  // a reader's overflow: the general path says what was wrong
  Py_RETURN_NOTIMPLEMENTED;
}

// The op `name`, of signature Sig (each entry looks its op up once).
template <class Sig>
c10::TypedOperatorHandle<Sig> op_named(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").template typed<Sig>();
}

// op(args...) through the dispatcher below the Autograd key with the GIL released, as the
// wrapper's torch.ops call runs it.
template <class Sig, class... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  const WithoutGil released;
  const at::AutoDispatchBelowAutograd below_autograd;
  return op.call(std::forward<Args>(args)...);
}

// The op's outputs as torch.ops returns them: a tuple of tensors.
template <class... Ts>
PyObject* wrap_tuple(std::tuple<Ts...>&& outputs) {
  PyObject* tuple = PyTuple_New(sizeof...(Ts));
  if (tuple == nullptr) return nullptr;
  Py_ssize_t i = 0;
  bool wrapped = true;
  const auto put = [&](Tensor& t) {
    PyObject* item = wrapped ? THPVariable_Wrap(std::move(t)) : nullptr;
    wrapped = item != nullptr;
    PyTuple_SET_ITEM(tuple, i++, item);  // a NULL item is allowed in a tuple that is then freed
  };
  std::apply([&](auto&... t) { (put(t), ...); }, outputs);
  if (wrapped) return tuple;
  Py_DECREF(tuple);
  return nullptr;
}

using MoeMlpOp = Tensor(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const OptTensor&,
                        const OptTensor&, const Tensor&, const OptTensor&, const OptTensor&, int64_t, double, double,
                        const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool);

// moe_mlp(x, gate_weight, gate_bias, mlp1_weight, mlp1_bias, mlp2_weight, mlp2_bias,
//         experts_per_token, swiglu_alpha, swiglu_limit, batch_invariant), as moekit.moe_mlp takes
// them; x [..., H], its leading dimensions flattened for the op and restored on y as the wrapper's
// general path does it (transformers' layers pass [batch, tokens, H]: ~20 us a call there).
PyObject* moe_mlp(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("moe_mlp", nargs, 11)) return nullptr;
  OptTensor x, gate_weight, gate_bias, mlp1_bias, mlp2_bias;
  std::array<OptTensor, 4> w1, w2;
  int64_t k = 0;
  double alpha = 0, limit = 0;
  const bool plain = read_tensor(args[0], false, x) && read_tensor(args[1], false, gate_weight) &&
                     read_tensor(args[2], true, gate_bias) && read_weights(args[3], w1) &&
                     read_tensor(args[4], true, mlp1_bias) && read_weights(args[5], w2) &&
                     read_tensor(args[6], true, mlp2_bias) && read_int(args[7], k) && read_float(args[8], alpha) &&
                     read_float(args[9], limit) && PyBool_Check(args[10]) && x->dim() >= 1;
  if (general_path(plain, {&x, &gate_weight, &gate_bias, &w1[0], &mlp1_bias, &w2[0], &mlp2_bias})) {
    return not_implemented();
  }
  const bool batch_invariant = args[10] == Py_True;
  static const auto op = op_named<MoeMlpOp>("moekit::moe_mlp");
  const bool flat = x->dim() == 2;
  const c10::IntArrayRef shape = x->sizes();
  const Tensor x2 = flat ? *x : x->reshape({c10::multiply_integers(shape.begin(), shape.end() - 1), shape.back()});
  Tensor y = call_below_autograd(op, x2, *gate_weight, gate_bias, *w1[0], w1[1], mlp1_bias, *w2[0], w2[1], mlp2_bias, k,
                                 alpha, limit, w1[2], w1[3], w2[2], w2[3], batch_invariant);
  return THPVariable_Wrap(flat ? std::move(y) : y.reshape(shape));
  END_HANDLE_TH_ERRORS
}

using RouteOp = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(const Tensor&, int64_t);

// route(logits, k), as moekit.route takes them: the op's six outputs, which the wrapper names.
PyObject* route(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("route", nargs, 2)) return nullptr;
  OptTensor logits;
  int64_t k = 0;
  if (general_path(read_tensor(args[0], false, logits) && read_int(args[1], k), {&logits})) return not_implemented();
  static const auto op = op_named<RouteOp>("moekit::route");
  return wrap_tuple(call_below_autograd(op, *logits, k));
  END_HANDLE_TH_ERRORS
}

using AddRmsNormOp = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, double);

// add_rms_norm(x, residual, scale, eps), as moekit.add_rms_norm takes them.
PyObject* add_rms_norm(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("add_rms_norm", nargs, 4)) return nullptr;
  OptTensor x, residual, scale;
  double eps = 0;
  const bool plain = read_tensor(args[0], false, x) && read_tensor(args[1], false, residual) &&
                     read_tensor(args[2], false, scale) && read_float(args[3], eps);
  if (general_path(plain, {&x, &residual, &scale})) return not_implemented();
  static const auto op = op_named<AddRmsNormOp>("moekit::add_rms_norm");
  return wrap_tuple(call_below_autograd(op, *x, *residual, *scale, eps));
  END_HANDLE_TH_ERRORS
}

// A METH_FASTCALL entry point.
PyMethodDef entry(const char* name, PyObject* (*fn)(PyObject*, PyObject* const*, Py_ssize_t), const char* doc) {
  return {name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fn)), METH_FASTCALL, doc};
}

PyMethodDef methods[] = {
    entry("moe_mlp", moe_mlp, "moekit.moe_mlp's eager call, or NotImplemented where its general path must take it"),
    entry("route", route, "moekit.route's eager call (the op's outputs), or NotImplemented"),
    entry("add_rms_norm", add_rms_norm, "moekit.add_rms_norm's eager call, or NotImplemented"),
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_eager", "moekit's eager entry points (python/csrc/eager_calls.cpp)",
                      -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__eager() { return PyModule_Create(&module); }
