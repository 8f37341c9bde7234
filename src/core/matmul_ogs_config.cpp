#include "matmul_ogs_config.h"

#include "moekit/error.h"

namespace moekit {

MatmulOgsKernel matmul_ogs_kernel_named(const std::string& name) {
  std::string names;
  for (MatmulOgsKernel k : kMatmulOgsKernels) {
    if (name == matmul_ogs_kernel_name(k)) return k;
    names += std::string(names.empty() ? "" : ", ") + matmul_ogs_kernel_name(k);
  }
  throw Error(Error::Kind::kValue, "moekit.matmul_ogs: 'config' expected one of " + names + ", got '" + name + "'");
}

MatmulOgsConfig matmul_ogs_launch_config(const MatmulOgsProblem& p, const MatmulOgsOperands& o,
                                         const DeviceInfo& device, const std::string& forced) {
  if (forced.empty()) return matmul_ogs_config(choose_matmul_ogs_kernel(p, o, device), p.mxfp4);
  const MatmulOgsKernel k = matmul_ogs_kernel_named(forced);
  if (const char* needs = matmul_ogs_config_refusal(k, p, o, device)) {
    throw Error(Error::Kind::kValue, "moekit.matmul_ogs: 'config' " + forced + " cannot run this call: it needs " + needs);
  }
  return matmul_ogs_config(k, p.mxfp4);
}

}  // namespace moekit
