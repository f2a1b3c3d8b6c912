// `tempo export`: a model and its current weights as an ONNX file that any
// ONNX runtime runs (inference form: BatchNormalization with its running
// statistics, Dropout left out).
#pragma once

#include <string>

#include "trusted/model.h"

namespace tempo {

// The serialised ModelProto. A model read from ONNX keeps its own graph with
// the initializers replaced; a zoo model built from chains of layers
// (mlp, cnn, resnet18, resnet50, vgg16) is written as opset 13 with
// PyTorch's state_dict names as initializer names. Other models: an error.
std::string export_onnx(const Model& m);

}  // namespace tempo
