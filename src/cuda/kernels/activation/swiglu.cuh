// gpt-oss SwiGLU on one (glu, linear) pair and its gradients, as the CPU backend computes them.
#pragma once

namespace moekit::cuda {

__device__ __forceinline__ float swiglu(float glu, float lin, float alpha, float limit) {
  glu = glu > limit ? limit : glu;
  lin = lin > limit ? limit : (lin < -limit ? -limit : lin);
  return glu / (1.0f + expf(-alpha * glu)) * (lin + 1.0f);
}

// The gradients of swiglu(glu, lin) for the output's gradient g, as the CPU backend computes them:
// zero through an active clamp (glu > limit; lin outside [-limit, limit]); NaN propagates.
struct SwigluGrad {
  float glu, lin;
};
__device__ __forceinline__ SwigluGrad swiglu_backward(float glu, float lin, float g, float alpha, float limit) {
  const bool glu_passes = !(glu > limit), lin_passes = !(lin > limit || lin < -limit);
  const float gc = glu_passes ? glu : limit;
  const float lc = lin_passes ? lin : (lin > limit ? limit : -limit);
  const float sig = 1.0f / (1.0f + expf(-alpha * gc));
  const float silu = gc * sig, dsilu = sig + alpha * gc * sig * (1.0f - sig);
  return {glu_passes ? g * (lc + 1.0f) * dsilu : 0.0f, lin_passes ? g * silu : 0.0f};
}

}  // namespace moekit::cuda
