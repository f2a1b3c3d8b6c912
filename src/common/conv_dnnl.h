// Whole convolutions through oneDNN (built with TEMPO_DNNL): the kernels
// behind conv2d_* in common/conv.h when a ConvWorkspace has them.
#pragma once

#include "common/conv.h"

#if TEMPO_DNNL
namespace tempo {

std::string dnnl_conv_kernel(ConvWorkspace::Dnnl& d, const ConvGeometry& g);
void dnnl_conv_forward(ConvWorkspace::Dnnl& d, const ConvGeometry& g, const float* x, const float* w, float* y);
void dnnl_conv_backward_input(ConvWorkspace::Dnnl& d, const ConvGeometry& g, const float* dy, const float* w,
                              float* dx);
void dnnl_conv_backward_weight(ConvWorkspace::Dnnl& d, const ConvGeometry& g, const float* x, const float* dy,
                               float* dw);
void dnnl_conv_backward(ConvWorkspace::Dnnl& d, const ConvGeometry& g, const float* x, const float* dy,
                        const float* w, float* dw, float* dx);

}  // namespace tempo
#endif
