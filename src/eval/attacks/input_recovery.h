// Input recovery (P5): can a worker rebuild the training images from what it
// is sent? Three places where image content reaches a worker:
//
//  - the first convolution in im2col mode, only with --offload-first: its
//    operand A' = L·A·Q⁻¹ holds every k×k patch of every image, one row per
//    output position, rows permuted and scaled, the k·k columns permuted
//    and scaled by one key shared by all rows;
//  - the first offloaded convolution in im2col mode by default (the
//    second of `cnn`): patches of post-ReLU, max-pooled feature maps;
//  - the first channel-mode convolution: whole feature maps, each times one
//    secret scale, images and channels permuted, the spatial layout intact.
//
// The attack on first-layer patches (single-channel images whose pixels lie
// on the k/255 lattice, 3×3 same convolutions):
//  1. Column key. Within a row, the ratio of two columns is
//     (q_j/q_j')·(x/x'); equal neighbouring pixels are common, so over all
//     rows the sharpest mode of that ratio is q_j/q_j' exactly. Signs follow
//     from pixels being non-negative.
//  2. Row scales. A de-scaled row is s_i·(k_1..k_9)/255 with integer k; the
//     smallest multiplier that puts every entry on integers gives the patch
//     as a primitive integer vector (exact up to one integer factor).
//  3. Layout. Which column is which patch entry: neighbouring entries
//     correlate most; the best few layouts are then ranked by how many
//     overlapping patches match exactly (step 4).
//  4. Placement. Patches of horizontally or vertically adjacent positions
//     share k·(k−1) pixels; where the shared part (reduced by its gcd)
//     occurs exactly once on each side, the two rows are joined. Joined rows
//     form fragments with relative coordinates; each fragment's pixels
//     follow up to one factor, and the lattice fixes that factor (the
//     smallest one that makes every pixel k/255). All-zero patches (the background) carry no
//     position and are never joined; they are zero in every reconstruction.
//  5. Images. The N largest fragments (N from the shapes) are the attacker's
//     images, placed where their extent fits the canvas (centred in what
//     remains), in the orientation (one of 8, shared by all: the layout is
//     only known up to a rotation or reflection) that best matches the
//     public mean image; the centring convention (where the odd pixel of
//     margin goes) is read off public images too.
// Scoring uses the trace (traced.h); the attacker never sees it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/conv.h"
#include "trusted/trainer.h"

namespace tempo {

// ---- Image quality, images in [0, 1] --------------------------------------

// 10·log10(1/MSE); +inf for identical images.
double psnr(const float* a, const float* b, int64_t n);
// SSIM of Wang et al. (2004): 11×11 Gaussian window (σ = 1.5) over the valid
// region, C1 = (0.01·L)², C2 = (0.03·L)², L = 1; the mean of the SSIM map.
// Images smaller than the window are an error.
double ssim(const float* a, const float* b, int64_t h, int64_t w);
// r mapped by the least-squares α·r + β onto the truth t, clipped to [0, 1]:
// what cannot be known from a ciphertext up to scale (brightness, contrast)
// is granted to every reconstruction and to the baseline alike.
std::vector<float> affine_fit(const float* r, const float* t, int64_t n);

// ---- The attack on first-layer im2col patches -------------------------------

struct PatchAttack {
  // layout[ky·k + kx]: the ciphertext column of patch entry (ky, kx), in the
  // orientation chosen by the prior (one of 8 the ciphertext cannot tell apart).
  std::vector<int32_t> layout;
  int orientation = 0;           // the chosen one (0: as first found)
  std::vector<double> col_scale;  // column j / col_scale[j]: plaintext column times a per-row factor
  // Per row: the patch in layout order as a primitive integer vector
  // (k·k entries), all zero for an all-zero row; patch_ok[i] = 0 where no
  // integer vector fitted.
  std::vector<int32_t> patch;
  std::vector<uint8_t> patch_ok;
  // Blind placement: each row's output slot (−1: not placed) and the
  // position of its centre pixel there.
  std::vector<int32_t> slot, y, x;
  std::vector<float> images;  // slots × H × W; pixels k/255 where the lattice fits, else scaled to max 1
  int64_t slots = 0;
};

// ct: the ciphertext A' ((g.n·H·W) × 9) of a 3×3 same convolution of
// single-channel images. pub: `pub_count` public H×W images of the same
// kind (the attacker's prior): their mean picks the orientation, their
// extents the data set's centring convention.
PatchAttack attack_patches(const float* ct, const ConvGeometry& g, const float* pub, int64_t pub_count);

// The images if the row order were known (pos[i]: the plaintext row of
// ciphertext row i, i.e. image·H·W + y·W + x): fragments joined along true
// neighbours, values from the attack's patches. N × H × W.
std::vector<float> images_with_known_order(const PatchAttack& a, const ConvGeometry& g, const int32_t* pos);

// ---- The attack on channel-mode feature maps --------------------------------

// ct: X' (n × c maps of h × w), each map a plaintext map times one scale.
// The attacker's image of each ciphertext row, upsampled to oh × ow: every
// map normalised to [0, 1] (sign from non-negativity), inverted where its
// border is brighter than its centre on average over the batch, averaged
// over channels. n × oh × ow.
std::vector<float> images_from_maps(const float* ct, int64_t n, int64_t c, int64_t h, int64_t w, int64_t oh,
                                    int64_t ow);

// ---- The measurement ----------------------------------------------------------

struct InputRecoveryRow {
  std::string setting;
  bool attempted = false;
  int64_t images = 0;
  double rows_placed = 0;    // fraction of non-zero rows (maps) put at their true place in the right image
  double images_placed = 0;  // fraction of images given a reconstruction of their own
  double images_exact = 0;   // fraction of images reconstructed at PSNR ≥ 40 dB
  double psnr = 0, ssim = 0, base_psnr = 0, base_ssim = 0;  // means over images; PSNR capped at 100 dB
  std::string note;
};

// Captures one training step's images and the input of the second
// convolution (cfg in tee-only mode, `cnn`-like: two 3×3 same convolutions
// first), encrypts them as the pipeline does (--offload-first im2col; channel
// mode from the first offloaded convolution) under keys from `seed`
// (identity: the offload mode), attacks and scores.
std::vector<InputRecoveryRow> measure_input_recovery(TrainConfig cfg, int64_t at_step, uint64_t seed,
                                                     bool identity = false);

// ---- The default configuration's first offloaded product: its zeros -------
//
// The second convolution's im2col operand holds patches of post-ReLU,
// max-pooled feature maps: many exact zeros, and a zero stays a zero under
// any scale. So the zero pattern of A' is the plaintext's zero pattern with
// rows and columns permuted, which is what a jigsaw needs:
//  - columns: the 9 columns of one channel are shifted copies of one map,
//    and the C columns of one kernel offset share the padding's zeros; both
//    show as correlated zero indicators (phi coefficient over all rows);
//  - rows: horizontally adjacent positions share 6 of 9 offsets in every
//    channel, so a row's right part (offsets kx = 1, 2) equals its right
//    neighbour's left part (kx = 0, 1) bit for bit; likewise vertically.
// This measures how far that goes: how well the zero correlations single
// out each column's channel and offset, and, given the column structure,
// how many adjacencies the exact patterns determine uniquely, and how much
// of each image the correct ones assemble. It does not rebuild values or
// images (that needs the row and column scales as well).
struct ZeroJigsawResult {
  int64_t rows = 0, cols = 0, channels = 0;
  int mask_rank = 0;  // the additive mask on A (0: none, the default)
  double zero_fraction = 0;  // of the plaintext
  // Rows of A that are entirely zero: each would show a worker a row of
  // the mask alone, and enough of them its row space.
  int64_t zero_rows = 0;
  // The worker's guess of the zero pattern: the exact zeros of A', or with
  // a mask the zeros of the sparse part of a low-rank-plus-sparse split
  // (privacy/low_rank.h): the fraction guessed, their precision and recall,
  // and the AUC of the guess's score as a zero detector (0.5: chance).
  double pattern_fraction = 0, pattern_precision = 0, pattern_recall = 0, zero_auc = 0;
  // Of each column's k²−1 most correlated columns, the fraction of its
  // channel; of its C−1 most correlated, the fraction of its offset.
  double channel_purity = 0, channel_chance = 0, offset_purity = 0, offset_chance = 0;
  double count_channel_purity = 0;  // the same, nearest by the count of zeros
  // Columns with no zero (the centre of a map with no zero), and columns
  // with exactly images·side zeros, of which those whose zeros are exactly
  // one image border (the padding): the border positions, exposed.
  int64_t no_zero_columns = 0, border_columns = 0, border_columns_exact = 0;
  struct Joins {
    int64_t adjacencies = 0;  // true neighbour pairs in this direction
    int64_t unique = 0;       // rows joined by a mutually unique exact match
    int64_t correct = 0;      // of those, the true neighbour
  } right, down;
  // The same with mutual nearest matches (least Hamming distance, unique
  // both ways) instead of exact ones: what is left of the jigsaw when the
  // guessed pattern has errors.
  Joins right_nearest, down_nearest;
  // With the correct joins: the mean over images of the largest assembled
  // fragment (fraction of the image's positions), and the fraction of
  // positions in fragments of at least 10.
  double largest_fragment = 0, in_fragments_10 = 0;
};
// One result per mask rank (0: no mask), all on the same captured operand
// and keys (without row mixing: the mixing alone already hides almost
// every zero, and this measures the mask).
std::vector<ZeroJigsawResult> measure_zero_jigsaw(TrainConfig cfg, int64_t at_step, uint64_t seed,
                                                  const std::vector<int>& mask_ranks = {0});

// The attack on the mask through repeated rows (privacy/low_rank.h,
// find_common_subspace), on the same operand: the worker looks for many rows
// of the ciphertext in one low-dimensional subspace. Without row mixing the
// image background gives thousands (each a repeated row of A plus a row of
// the mask), and the subspace found holds the mask's row space; projected
// off it, every other row is A's row with the mask gone, up to the part of
// A in that subspace, and with the columns' signs (an oracle here) the
// zeros follow. With row mixing a row lies in that subspace only if its
// whole group is background.
struct MaskSubspaceResult {
  int mask_rank = 0, row_mix = 0, col_mix = 0;
  int64_t rows = 0;
  int64_t repeated_rows = 0;   // rows of A equal to at least 19 others
  int64_t subspace_dim = 0;    // numerical rank of the rows kept
  int64_t rows_in = 0;         // rows at distance < 1e-4 (unit rows) from it
  int64_t rows_in_repeated = 0;  // of which repeated rows of A (without mixing; scoring only)
  double mask_captured = 0;    // ‖P_S·Q_R‖²/r: the fraction of the mask's row space inside S (-1: no mask)
  // Zero detection on rows outside S, score −|entry| after projecting S
  // off (AUC; 0.5 chance), and after decoding with the true signs; -1 where
  // not measured (no subspace found, or no zeros left to find).
  double auc_projected = -1, auc_signs = -1;
  double precision_signs = -1, recall_signs = -1;  // decoded |z| < 0.01·max|z| taken for zero
  // The same decode with the signs the worker can read itself: the column
  // keys' signs from the ciphertext's column Gram matrix and each row's
  // sign from those (privacy/weight_recovery.h, gram_sign_factors).
  double col_signs_right = -1;  // fraction of the column keys' signs, up to one global sign
  double auc_gram = -1, precision_gram = -1, recall_gram = -1;
  int64_t decoded_rows = 0, exact_rows = 0;  // rows decoded; of which with every zero right
  double zeros_sent = 0;  // fraction of exact zeros in the operand before the mask (after any mixing)
  // An attack on the mixing itself (mixing on): the rows of one secret group
  // share that group's zero columns (a column zero in all its rows of A), so
  // the worker pairs rows by their small entries after projecting the
  // subspace off (cosine of −log|entry| profiles): each row's
  // `group_neighbours` most similar rows, and the share of them in its own
  // group; chance is (group size − 1)/(m − 1).
  int64_t group_neighbours = 0, group_queries = 0;
  double group_precision = -1, group_chance = -1;
  // The second step, given the groups by an oracle: the rows of A that a
  // group mixes lie in the span of its ciphertext rows plus the subspace
  // (which holds the mask's rows; none without a mask), d dimensions; a
  // row of A is zero in about half its columns, and a vector of the span
  // that is zero in d − 1 given columns is fixed up to scale, so the worker
  // tries random sets of d − 1 columns and keeps the vector with the most
  // further zeros (300 tries a group; none where d − 1 exceeds half the
  // columns: no try could hit). Groups whose zero set came out exactly that
  // of one of their rows of A; AUC of −|entry| of the vector kept
  // as a detector of the zeros of the best-matching row of A (0.5 chance);
  // and, as a reference, the same score for the group's rows projected off
  // the subspace.
  int64_t sparse_groups = 0, sparse_exact = 0;
  double sparse_auc = -1, sparse_auc_projected = -1;
};
// One column of that measurement: the blinding as --mask-rank, --row-mix
// and --col-mix set it (the column mixing, if any, after the row mixing and
// before the mask, as the pipeline applies them).
struct BlindingCase {
  int mask_rank = 0, row_mix = 0, col_mix = 0;
};
std::vector<MaskSubspaceResult> measure_mask_subspace(TrainConfig cfg, int64_t at_step, uint64_t seed,
                                                      const std::vector<BlindingCase>& cases);

}  // namespace tempo
