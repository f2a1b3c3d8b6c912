#include "eval/attacks/model_stealing.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "trusted/train_step.h"
#include "trusted/rng.h"

namespace tempo {

namespace {

// Training images [from, from + count) of d as a data set of their own, in
// the training slot (as_queries: in the test slot, which the loader takes
// without augmentation, as a prediction API would). train_y holds each
// image's row number, not its class: fit() looks its target row up by it.
Dataset slice(const Dataset& d, int64_t from, int64_t count, bool as_queries) {
  Dataset s;
  s.description = d.description;
  s.sample_shape = d.sample_shape;
  s.num_classes = d.num_classes;
  s.cifar_augment = d.cifar_augment;
  s.norm_mean = d.norm_mean;
  s.norm_std = d.norm_std;
  const int64_t per = numel_of(d.sample_shape);
  Shape shape = {count};
  shape.insert(shape.end(), d.sample_shape.begin(), d.sample_shape.end());
  Tensor& x = as_queries ? s.test_x : s.train_x;
  std::vector<int64_t>& y = as_queries ? s.test_y : s.train_y;
  x.resize(shape);
  std::memcpy(x.data(), d.train_x.data() + from * per, static_cast<size_t>(count * per) * sizeof(float));
  y.resize(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) y[static_cast<size_t>(i)] = i;
  return s;
}

std::vector<float> one_hot(const std::vector<int64_t>& labels, int64_t classes) {
  std::vector<float> t(labels.size() * static_cast<size_t>(classes), 0.0f);
  for (size_t i = 0; i < labels.size(); ++i) t[i * static_cast<size_t>(classes) + static_cast<size_t>(labels[i])] = 1;
  return t;
}

// `steps` training steps of `model` on d's training slice against `targets`
// (one row of class probabilities per image), shuffled from `seed`, epoch
// after epoch. One-hot targets make this exactly the trainer's step
// (soft_cross_entropy then equals cross_entropy).
void fit(Model& model, const Dataset& d, const std::vector<float>& targets, int64_t steps, const OptimConfig& oc,
         int64_t batch_size, uint64_t seed) {
  const int64_t classes = model.num_classes;
  TEMPO_CHECK(static_cast<int64_t>(targets.size()) == static_cast<int64_t>(d.train_y.size()) * classes,
              "model stealing: " + std::to_string(targets.size()) + " target values for " +
                  std::to_string(d.train_y.size()) + " images of " + std::to_string(classes) + " classes");
  TeeOnlyBackend local;
  Rng dropout = Rng::derive(seed, 0xd509);
  Context ctx{&local, &local, true, &dropout};
  auto optim = make_optimizer(oc, model.parameters());
  TrainStep step(model, *optim, ctx);
  BatchLoader loader(d, true, batch_size, true, seed);
  Tensor x, t;
  std::vector<int64_t> rows;
  int64_t done = 0;
  for (int epoch = 1; done < steps; ++epoch) {
    const double lr = lr_for_epoch(oc, epoch);
    loader.start_epoch(epoch);
    while (done < steps && loader.next(x, rows)) {
      const int64_t b = static_cast<int64_t>(rows.size());
      t.resize({b, classes});
      for (int64_t i = 0; i < b; ++i)
        std::memcpy(t.data() + i * classes, targets.data() + rows[static_cast<size_t>(i)] * classes,
                    static_cast<size_t>(classes) * sizeof(float));
      step.run_soft(x, t.data(), lr);
      ++done;
    }
  }
}

double fraction_equal(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  int64_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  return a.empty() ? 0.0 : static_cast<double>(same) / static_cast<double>(a.size());
}

}  // namespace

StealingReport measure_model_stealing(const StealingConfig& cfg,
                                      const std::function<void(const std::string&)>& progress) {
  TEMPO_CHECK(!cfg.budgets.empty(), "model stealing: no query budgets given (--budgets)");
  for (int64_t b : cfg.budgets)
    TEMPO_CHECK(b > 0, "model stealing: query budget " + std::to_string(b) + " is not positive (--budgets)");
  TEMPO_CHECK(cfg.victim_epochs > 0 && cfg.batch_size > 0 && cfg.substitute_epochs > 0 && cfg.min_steps > 0 &&
                  cfg.max_steps >= cfg.min_steps,
              "model stealing: epochs, batch size and step limits must be positive (and min ≤ max steps)");
  auto say = [&](const std::string& line) {
    if (progress) progress(line);
  };
  const std::string sub_name = cfg.substitute.empty() ? cfg.model : cfg.substitute;
  auto victim = build_model(cfg.model, cfg.seed);
  // The attacker initialises its own model: another seed than the victim's.
  const uint64_t sub_seed = cfg.seed ^ 0x57ea1'0001ULL;
  const Shape sub_shape = build_model(sub_name, sub_seed)->input_shape;
  TEMPO_CHECK(sub_shape == victim->input_shape, "model stealing: substitute '" + sub_name + "' takes inputs " +
                                                    shape_str(sub_shape) + ", the victim '" + cfg.model + "' " +
                                                    shape_str(victim->input_shape));
  const Dataset data = load_dataset(cfg.data, victim->input_shape, cfg.seed);
  TEMPO_CHECK(!data.test_y.empty(), "model stealing: data set '" + cfg.data + "' has no test split to score on");
  const int64_t n = static_cast<int64_t>(data.train_y.size());
  const int64_t pool = *std::max_element(cfg.budgets.begin(), cfg.budgets.end());
  TEMPO_CHECK(2 * pool <= n, "model stealing: the largest budget (" + std::to_string(pool) +
                                 " queries) must leave the victim at least half of the " + std::to_string(n) +
                                 " training images; lower --budgets or use more data");
  const int64_t classes = victim->num_classes;
  StealingReport rep;
  rep.data = data.description;
  rep.victim_train = n - pool;
  rep.pool = pool;
  rep.test = static_cast<int64_t>(data.test_y.size());
  rep.chance = 1.0 / static_cast<double>(classes);
  TeeOnlyBackend local;
  const int64_t eval_batch = std::max<int64_t>(cfg.batch_size, 256);

  // The victim, trained on its own labelled part as `tempo train` would.
  {
    Dataset own = slice(data, 0, n - pool, false);
    const std::vector<float> labels =
        one_hot(std::vector<int64_t>(data.train_y.begin(), data.train_y.begin() + (n - pool)), classes);
    const int64_t steps = cfg.victim_epochs * ((n - pool + cfg.batch_size - 1) / cfg.batch_size);
    fit(*victim, own, labels, steps, cfg.optim, cfg.batch_size, cfg.seed);
  }
  const Predictions victim_test = predict(*victim, data, false, eval_batch, local);
  rep.victim_accuracy = fraction_equal(victim_test.labels, data.test_y);
  char buf[256];
  std::snprintf(buf, sizeof buf, "victim %s: %lld training images, test accuracy %.4f", cfg.model.c_str(),
                static_cast<long long>(rep.victim_train), rep.victim_accuracy);
  say(buf);

  // The attacker's queries, answered as `tempo predict` answers them.
  const Predictions answers = predict(*victim, slice(data, n - pool, pool, true), false, eval_batch, local);
  const std::vector<float> hard = one_hot(answers.labels, classes);

  for (int64_t budget : cfg.budgets) {
    Dataset queries = slice(data, n - pool, budget, false);
    // Trained on exactly the images it sent: no augmentation.
    queries.cifar_augment = false;
    const int64_t per_epoch = (budget + cfg.batch_size - 1) / cfg.batch_size;
    const int64_t steps = std::clamp(cfg.substitute_epochs * per_epoch, cfg.min_steps, cfg.max_steps);
    for (bool soft : {true, false}) {
      const std::vector<float>& all = soft ? answers.probabilities : hard;
      const std::vector<float> targets(all.begin(), all.begin() + budget * classes);
      auto sub = build_model(sub_name, sub_seed);
      fit(*sub, queries, targets, steps, cfg.optim, cfg.batch_size, sub_seed + static_cast<uint64_t>(budget));
      const Predictions p = predict(*sub, data, false, eval_batch, local);
      StealingRow r;
      r.budget = budget;
      r.soft = soft;
      r.steps = steps;
      r.accuracy = fraction_equal(p.labels, data.test_y);
      r.agreement = fraction_equal(p.labels, victim_test.labels);
      rep.rows.push_back(r);
      std::snprintf(buf, sizeof buf,
                    "substitute %s, %lld queries, %s labels, %lld steps: accuracy %.4f, agreement %.4f",
                    sub_name.c_str(), static_cast<long long>(budget), soft ? "soft" : "hard",
                    static_cast<long long>(steps), r.accuracy, r.agreement);
      say(buf);
    }
  }
  return rep;
}

}  // namespace tempo
