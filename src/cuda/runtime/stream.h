// The stream an op launches on: the one the caller named, never one picked by omission.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "moekit/error.h"
#include "moekit/tensor.h"

namespace moekit::cuda {

inline cudaStream_t stream_of(const char* op, const Device& device, const ExecContext& ctx) {
  if (!ctx.cuda_stream_given) {
    throw Error(Error::Kind::kValue, std::string("moekit.") + op + ": 'ctx.cuda_stream' expected the CUDA stream of " +
                                         device.str() + " to launch on (ExecContext::on_stream), got none");
  }
  return static_cast<cudaStream_t>(ctx.cuda_stream);
}

}  // namespace moekit::cuda
