// gpt-oss SwiGLU on one (glu, linear) pair, as the CPU backend computes it; NaN propagates.
#pragma once

namespace moekit::cuda {

__device__ __forceinline__ float swiglu(float glu, float lin, float alpha, float limit) {
  glu = glu > limit ? limit : glu;
  lin = lin > limit ? limit : (lin < -limit ? -limit : lin);
  return glu / (1.0f + expf(-alpha * glu)) * (lin + 1.0f);
}

}  // namespace moekit::cuda
