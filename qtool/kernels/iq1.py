"""IQ1_S and IQ1_M kernels: groups of 8 weights snapped to a 2048-point ternary lattice.

Each 8-weight group stores an 11-bit index into ggml's ``iq1s_grid`` (every coordinate in {-1, 0, 1})
and is reconstructed as ``x ~ dl * (grid[j] + delta)``, ``delta = +-IQ1S_DELTA`` (0.125) per group
sign bit, ``dl = d * (2*s + 1)`` with a 3-bit block scale s. IQ1_S shares one scale and one delta
sign per 32 weights; IQ1_M has one scale per 16 weights and one delta sign per 8.

The quantizers search every split of the sorted block into three levels, then snap each group of
8 to the lattice: a group whose level pattern is a grid point keeps it, any other takes the best of
its precomputed neighbours (the grid points in the three nearest distance shells), as
``iq2xs_init_impl`` builds them. The tables are decoded once into module-level arrays:

    GRID_LEVELS  uint8 [2048, 8]   level 0..2 of each coordinate (grid value = level - 1)
    GRID_VALUES  float32 [2048, 8] the same as float32 -1/0/1 (for dequantization)
    neighbour_tables() -> (kmap, neighbours), built on first use:
      kmap        int32 [43692]    pattern u = sum(level_j << 2j) -> grid index, or -(offset + 1)
      neighbours  uint16 [...]     at offset: count n, then n grid indices in (distance, index) order
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from qtool.errors import QuantError

from qtool.kernels.common import (F32, fp16_bits_to_fp32, fp32_to_fp16_bits, jit, jit_rows, load_fp16, load_u16,
                                 nearest_int, store_fp16, store_u16)

QK_K = 256
IQ1_S_BYTES = 50  # d (f16) + qs[32] + qh u16[8]
IQ1_M_BYTES = 56  # qs[32] + qh[16] + scales[8]
NGRID = 2048
KMAP_SIZE = 43692

#: ggml's kgrid_1bit_2048 (iq2xs_init_impl): each grid point as 8 two-bit levels, coordinate j in bits 2j..2j+1
KGRID_1BIT_2048 = np.array([
    0, 2, 5, 8, 10, 17, 21, 32, 34, 40, 42, 69, 81, 84, 86, 101,
    128, 130, 136, 138, 149, 160, 162, 168, 170, 260, 261, 273, 276, 278, 281, 282,
    293, 321, 326, 329, 338, 341, 346, 353, 356, 358, 360, 389, 401, 404, 406, 421,
    512, 514, 520, 522, 533, 544, 546, 552, 554, 581, 593, 601, 612, 617, 640, 642,
    648, 650, 657, 661, 665, 672, 674, 680, 682, 1041, 1044, 1046, 1061, 1089, 1097, 1109,
    1114, 1124, 1125, 1169, 1177, 1189, 1281, 1284, 1285, 1286, 1301, 1304, 1306, 1321, 1344, 1349,
    1354, 1360, 1361, 1364, 1365, 1366, 1369, 1376, 1378, 1381, 1384, 1386, 1409, 1425, 1429, 1432,
    1434, 1441, 1444, 1445, 1446, 1449, 1556, 1561, 1601, 1604, 1616, 1618, 1621, 1624, 1632, 1633,
    1638, 1641, 1669, 1681, 1684, 1689, 2048, 2050, 2056, 2058, 2069, 2080, 2082, 2088, 2090, 2117,
    2129, 2134, 2149, 2176, 2178, 2184, 2186, 2197, 2208, 2210, 2216, 2218, 2309, 2321, 2324, 2329,
    2340, 2341, 2369, 2384, 2385, 2389, 2401, 2404, 2409, 2449, 2452, 2454, 2457, 2469, 2560, 2562,
    2568, 2570, 2581, 2592, 2594, 2600, 2602, 2629, 2641, 2649, 2657, 2661, 2688, 2690, 2693, 2696,
    2698, 2709, 2720, 2722, 2728, 2730, 4112, 4113, 4116, 4121, 4132, 4133, 4161, 4164, 4176, 4181,
    4184, 4193, 4196, 4197, 4201, 4241, 4244, 4246, 4257, 4261, 4353, 4356, 4358, 4361, 4368, 4370,
    4373, 4376, 4385, 4388, 4393, 4421, 4426, 4432, 4433, 4434, 4436, 4437, 4438, 4441, 4448, 4453,
    4484, 4498, 4501, 4513, 4516, 4625, 4628, 4630, 4645, 4672, 4678, 4681, 4690, 4693, 4696, 4698,
    4708, 4710, 4741, 4753, 4756, 4758, 4773, 5121, 5126, 5129, 5140, 5141, 5144, 5145, 5153, 5158,
    5185, 5189, 5190, 5192, 5194, 5201, 5204, 5205, 5206, 5209, 5218, 5221, 5224, 5252, 5257, 5264,
    5268, 5269, 5272, 5273, 5274, 5281, 5284, 5285, 5289, 5378, 5381, 5386, 5393, 5396, 5397, 5398,
    5401, 5408, 5410, 5413, 5416, 5418, 5441, 5444, 5445, 5446, 5457, 5458, 5460, 5461, 5462, 5465,
    5466, 5473, 5476, 5477, 5478, 5481, 5504, 5506, 5508, 5509, 5512, 5514, 5520, 5521, 5524, 5525,
    5526, 5529, 5530, 5536, 5538, 5541, 5633, 5636, 5637, 5638, 5653, 5654, 5656, 5658, 5665, 5670,
    5696, 5698, 5700, 5701, 5704, 5706, 5713, 5717, 5718, 5720, 5721, 5729, 5732, 5733, 5736, 5737,
    5738, 5766, 5770, 5778, 5781, 5796, 5801, 6161, 6166, 6181, 6209, 6212, 6214, 6217, 6224, 6229,
    6232, 6234, 6240, 6241, 6244, 6246, 6249, 6277, 6289, 6292, 6309, 6416, 6418, 6421, 6426, 6433,
    6437, 6466, 6468, 6469, 6472, 6481, 6484, 6485, 6486, 6489, 6490, 6496, 6501, 6506, 6537, 6545,
    6546, 6549, 6552, 6561, 6566, 6569, 6665, 6678, 6692, 6694, 6724, 6726, 6729, 6736, 6738, 6741,
    6744, 6753, 6758, 6761, 6789, 6801, 6806, 6810, 8192, 8194, 8200, 8202, 8213, 8224, 8226, 8229,
    8232, 8234, 8261, 8273, 8281, 8289, 8293, 8320, 8322, 8328, 8330, 8341, 8352, 8354, 8357, 8360,
    8362, 8453, 8465, 8468, 8473, 8485, 8514, 8516, 8521, 8533, 8536, 8538, 8545, 8548, 8549, 8550,
    8581, 8592, 8598, 8601, 8613, 8705, 8712, 8714, 8721, 8725, 8736, 8738, 8744, 8746, 8773, 8785,
    8790, 8793, 8805, 8833, 8840, 8842, 8849, 8853, 8864, 8866, 8872, 8874, 9221, 9236, 9238, 9241,
    9253, 9284, 9285, 9286, 9289, 9298, 9301, 9304, 9306, 9318, 9349, 9361, 9364, 9369, 9377, 9381,
    9481, 9493, 9505, 9513, 9536, 9541, 9544, 9553, 9556, 9557, 9561, 9570, 9573, 9576, 9609, 9616,
    9620, 9621, 9624, 9626, 9633, 9636, 9638, 9641, 9733, 9744, 9746, 9753, 9765, 9793, 9801, 9813,
    9824, 9825, 9833, 9860, 9862, 9872, 9882, 10240, 10242, 10248, 10250, 10261, 10272, 10274, 10280, 10282,
    10309, 10321, 10324, 10341, 10368, 10370, 10376, 10378, 10400, 10402, 10408, 10410, 10505, 10513, 10516, 10521,
    10533, 10566, 10569, 10578, 10581, 10593, 10596, 10598, 10601, 10629, 10640, 10646, 10649, 10660, 10661, 10752,
    10754, 10760, 10762, 10784, 10786, 10792, 10794, 10821, 10833, 10838, 10841, 10853, 10880, 10882, 10888, 10890,
    10901, 10912, 10914, 10920, 10922, 16389, 16401, 16406, 16421, 16457, 16466, 16469, 16472, 16474, 16481, 16484,
    16486, 16532, 16537, 16545, 16550, 16640, 16641, 16644, 16646, 16649, 16658, 16661, 16662, 16664, 16666, 16673,
    16678, 16681, 16709, 16712, 16714, 16721, 16724, 16725, 16726, 16729, 16730, 16741, 16744, 16746, 16769, 16772,
    16774, 16784, 16786, 16789, 16800, 16801, 16802, 16901, 16913, 16916, 16918, 16933, 16961, 16978, 16981, 16986,
    16996, 17001, 17033, 17044, 17061, 17409, 17429, 17433, 17449, 17477, 17480, 17482, 17489, 17492, 17493, 17494,
    17505, 17506, 17509, 17512, 17514, 17537, 17542, 17545, 17552, 17554, 17557, 17568, 17569, 17577, 17665, 17666,
    17669, 17674, 17681, 17684, 17685, 17686, 17689, 17696, 17701, 17706, 17729, 17732, 17733, 17734, 17737, 17744,
    17745, 17748, 17749, 17750, 17752, 17753, 17761, 17764, 17765, 17766, 17769, 17794, 17796, 17797, 17800, 17809,
    17812, 17813, 17814, 17817, 17818, 17829, 17832, 17834, 17921, 17925, 17929, 17940, 17941, 17944, 17946, 17953,
    17956, 17961, 17984, 17986, 17989, 17992, 18000, 18001, 18002, 18005, 18006, 18009, 18018, 18021, 18024, 18049,
    18053, 18058, 18068, 18069, 18081, 18084, 18086, 18437, 18449, 18453, 18458, 18469, 18498, 18505, 18512, 18517,
    18520, 18529, 18532, 18534, 18537, 18565, 18577, 18580, 18582, 18585, 18597, 18689, 18693, 18694, 18698, 18704,
    18708, 18709, 18712, 18721, 18724, 18726, 18752, 18757, 18762, 18769, 18770, 18772, 18773, 18774, 18777, 18784,
    18786, 18789, 18790, 18794, 18822, 18825, 18834, 18837, 18838, 18840, 18849, 18852, 18854, 18857, 18966, 19012,
    19014, 19017, 19029, 19032, 19034, 19044, 19049, 19092, 19109, 20481, 20484, 20485, 20486, 20489, 20498, 20501,
    20506, 20513, 20516, 20521, 20544, 20549, 20552, 20561, 20564, 20565, 20566, 20569, 20581, 20584, 20614, 20617,
    20629, 20632, 20640, 20641, 20646, 20649, 20741, 20744, 20745, 20746, 20753, 20756, 20757, 20758, 20760, 20761,
    20768, 20773, 20774, 20776, 20778, 20801, 20804, 20805, 20806, 20809, 20816, 20817, 20818, 20820, 20821, 20822,
    20824, 20825, 20826, 20833, 20836, 20837, 20838, 20841, 20866, 20869, 20881, 20884, 20885, 20886, 20889, 20896,
    20901, 20906, 20993, 20998, 21010, 21013, 21018, 21025, 21028, 21058, 21061, 21066, 21073, 21076, 21077, 21078,
    21081, 21090, 21093, 21125, 21136, 21138, 21141, 21145, 21146, 21156, 21508, 21509, 21521, 21524, 21525, 21526,
    21528, 21529, 21537, 21541, 21544, 21546, 21569, 21572, 21573, 21574, 21577, 21578, 21584, 21585, 21588, 21589,
    21590, 21592, 21593, 21594, 21601, 21602, 21604, 21605, 21606, 21609, 21632, 21640, 21642, 21649, 21652, 21653,
    21654, 21657, 21665, 21668, 21669, 21674, 21761, 21762, 21764, 21765, 21766, 21769, 21776, 21777, 21778, 21780,
    21781, 21782, 21785, 21786, 21793, 21796, 21797, 21798, 21801, 21824, 21825, 21826, 21828, 21829, 21830, 21832,
    21833, 21840, 21841, 21842, 21844, 21845, 21846, 21848, 21849, 21850, 21856, 21857, 21860, 21861, 21862, 21864,
    21865, 21866, 21889, 21892, 21893, 21897, 21898, 21904, 21905, 21908, 21909, 21910, 21912, 21913, 21921, 21924,
    21925, 21926, 21929, 22016, 22017, 22018, 22020, 22022, 22024, 22025, 22033, 22036, 22037, 22040, 22041, 22048,
    22049, 22050, 22052, 22053, 22054, 22056, 22057, 22081, 22085, 22086, 22088, 22089, 22090, 22096, 22097, 22098,
    22100, 22101, 22102, 22104, 22105, 22106, 22113, 22116, 22117, 22121, 22146, 22149, 22150, 22152, 22153, 22154,
    22161, 22165, 22170, 22178, 22181, 22182, 22184, 22185, 22532, 22533, 22534, 22537, 22544, 22549, 22552, 22561,
    22570, 22597, 22600, 22602, 22609, 22612, 22613, 22614, 22616, 22617, 22624, 22626, 22628, 22629, 22658, 22665,
    22672, 22674, 22677, 22680, 22689, 22697, 22785, 22786, 22789, 22794, 22801, 22804, 22805, 22806, 22809, 22821,
    22849, 22852, 22853, 22854, 22857, 22864, 22865, 22866, 22868, 22869, 22870, 22872, 22873, 22874, 22881, 22884,
    22885, 22886, 22889, 22913, 22917, 22921, 22929, 22932, 22933, 22934, 22936, 22937, 22949, 23044, 23048, 23061,
    23066, 23072, 23077, 23078, 23081, 23109, 23112, 23113, 23121, 23125, 23126, 23128, 23129, 23138, 23141, 23144,
    23146, 23169, 23178, 23186, 23189, 23190, 23192, 23194, 23201, 24581, 24596, 24598, 24601, 24613, 24644, 24656,
    24661, 24662, 24664, 24666, 24673, 24676, 24678, 24681, 24705, 24726, 24741, 24833, 24836, 24838, 24841, 24850,
    24853, 24865, 24866, 24870, 24873, 24901, 24905, 24913, 24917, 24918, 24921, 24933, 24934, 24938, 24964, 24970,
    24978, 24981, 24993, 24998, 25001, 25105, 25110, 25113, 25152, 25153, 25158, 25173, 25174, 25176, 25184, 25221,
    25233, 25238, 25253, 25617, 25618, 25621, 25622, 25626, 25633, 25638, 25641, 25664, 25666, 25669, 25672, 25674,
    25681, 25684, 25685, 25686, 25689, 25690, 25696, 25698, 25701, 25732, 25733, 25737, 25744, 25746, 25748, 25749,
    25750, 25752, 25754, 25761, 25764, 25769, 25861, 25864, 25866, 25873, 25877, 25878, 25881, 25924, 25925, 25926,
    25929, 25936, 25937, 25940, 25941, 25942, 25945, 25953, 25956, 25957, 25958, 25961, 25990, 25993, 25994, 26001,
    26005, 26006, 26009, 26010, 26018, 26021, 26022, 26024, 26114, 26121, 26133, 26144, 26150, 26152, 26153, 26176,
    26181, 26184, 26186, 26193, 26196, 26197, 26198, 26200, 26202, 26208, 26213, 26216, 26240, 26242, 26245, 26250,
    26260, 26262, 26264, 26265, 26272, 26276, 26278, 26282, 26646, 26649, 26661, 26689, 26706, 26709, 26714, 26721,
    26729, 26757, 26769, 26776, 26790, 26881, 26884, 26896, 26901, 26913, 26916, 26918, 26921, 26944, 26945, 26949,
    26950, 26952, 26961, 26964, 26965, 26966, 26969, 26976, 26981, 26986, 27010, 27012, 27018, 27029, 27041, 27044,
    27045, 27049, 27153, 27158, 27160, 27201, 27204, 27209, 27216, 27221, 27224, 27226, 27236, 27237, 27241, 27270,
    27284, 27288, 27290, 27302, 32768, 32770, 32776, 32778, 32800, 32802, 32808, 32810, 32837, 32848, 32849, 32852,
    32854, 32857, 32869, 32896, 32898, 32904, 32906, 32917, 32928, 32930, 32936, 32938, 33029, 33041, 33044, 33046,
    33049, 33061, 33089, 33092, 33097, 33104, 33106, 33109, 33110, 33112, 33113, 33124, 33126, 33129, 33157, 33161,
    33172, 33174, 33177, 33189, 33280, 33282, 33288, 33290, 33301, 33312, 33314, 33320, 33322, 33361, 33364, 33369,
    33381, 33408, 33410, 33416, 33418, 33429, 33440, 33442, 33448, 33450, 33812, 33817, 33857, 33860, 33873, 33877,
    33882, 33889, 33892, 33897, 33940, 33945, 34049, 34057, 34066, 34069, 34074, 34086, 34089, 34112, 34113, 34117,
    34120, 34129, 34132, 34133, 34134, 34137, 34138, 34149, 34150, 34152, 34154, 34177, 34180, 34182, 34185, 34192,
    34194, 34197, 34200, 34214, 34321, 34326, 34329, 34341, 34369, 34372, 34377, 34378, 34384, 34389, 34393, 34394,
    34401, 34406, 34410, 34437, 34449, 34458, 34468, 34816, 34818, 34824, 34826, 34837, 34848, 34850, 34856, 34858,
    34881, 34885, 34897, 34900, 34905, 34917, 34921, 34944, 34946, 34952, 34954, 34965, 34976, 34978, 34984, 34986,
    35077, 35078, 35089, 35092, 35094, 35109, 35137, 35140, 35142, 35145, 35152, 35154, 35157, 35162, 35169, 35172,
    35205, 35222, 35225, 35237, 35328, 35330, 35336, 35338, 35349, 35360, 35362, 35368, 35370, 35397, 35409, 35412,
    35414, 35456, 35458, 35464, 35466, 35477, 35488, 35490, 35496, 35498, 36869, 36881, 36886, 36888, 36889, 36901,
    36929, 36934, 36937, 36949, 36952, 36954, 36969, 36970, 36997, 37009, 37012, 37014, 37017, 37029, 37121, 37124,
    37126, 37129, 37136, 37141, 37144, 37146, 37153, 37156, 37158, 37161, 37184, 37189, 37200, 37201, 37204, 37205,
    37206, 37209, 37218, 37221, 37252, 37254, 37266, 37269, 37272, 37281, 37284, 37286, 37289, 37381, 37393, 37396,
    37401, 37413, 37444, 37446, 37449, 37456, 37458, 37461, 37464, 37478, 37481, 37509, 37524, 37526, 37545, 37889,
    37892, 37894, 37904, 37909, 37912, 37926, 37952, 37962, 37969, 37972, 37973, 37974, 37976, 37977, 37984, 37985,
    37986, 37989, 38020, 38022, 38034, 38036, 38037, 38040, 38049, 38057, 38144, 38149, 38152, 38154, 38160, 38161,
    38164, 38165, 38166, 38169, 38177, 38181, 38185, 38186, 38209, 38212, 38213, 38214, 38217, 38224, 38225, 38226,
    38228, 38229, 38230, 38232, 38233, 38234, 38241, 38244, 38245, 38246, 38249, 38273, 38277, 38280, 38289, 38290,
    38292, 38293, 38294, 38297, 38298, 38304, 38306, 38309, 38312, 38314, 38401, 38404, 38416, 38421, 38425, 38432,
    38438, 38441, 38469, 38472, 38473, 38481, 38482, 38485, 38486, 38489, 38501, 38504, 38530, 38532, 38537, 38538,
    38546, 38548, 38549, 38564, 38566, 38569, 38917, 38934, 38937, 38949, 38977, 38982, 38992, 38994, 38997, 38998,
    39002, 39012, 39013, 39045, 39057, 39062, 39065, 39077, 39172, 39174, 39177, 39184, 39186, 39189, 39192, 39194,
    39200, 39201, 39204, 39206, 39232, 39234, 39237, 39240, 39242, 39249, 39252, 39253, 39254, 39257, 39266, 39269,
    39270, 39274, 39297, 39300, 39312, 39314, 39317, 39322, 39329, 39334, 39429, 39445, 39461, 39492, 39494, 39497,
    39504, 39509, 39512, 39521, 39557, 39569, 39572, 39573, 39574, 40960, 40962, 40968, 40970, 40981, 40992, 40994,
    41000, 41002, 41029, 41041, 41044, 41046, 41049, 41088, 41090, 41096, 41098, 41109, 41120, 41122, 41128, 41130,
    41221, 41225, 41233, 41236, 41238, 41241, 41242, 41286, 41289, 41297, 41301, 41304, 41306, 41313, 41316, 41349,
    41360, 41362, 41366, 41369, 41474, 41480, 41482, 41488, 41497, 41506, 41512, 41514, 41541, 41553, 41558, 41561,
    41573, 41600, 41602, 41608, 41610, 41621, 41632, 41634, 41640, 41642, 42009, 42021, 42049, 42052, 42064, 42068,
    42069, 42072, 42074, 42081, 42085, 42086, 42088, 42089, 42117, 42246, 42249, 42256, 42258, 42261, 42264, 42278,
    42281, 42306, 42309, 42321, 42324, 42325, 42326, 42329, 42341, 42346, 42369, 42372, 42373, 42374, 42377, 42386,
    42389, 42392, 42501, 42513, 42518, 42522, 42529, 42533, 42564, 42566, 42570, 42578, 42581, 42582, 42584, 42592,
    42594, 42630, 42640, 42645, 42646, 42649, 42657, 42660, 42662, 43008, 43010, 43016, 43018, 43040, 43042, 43048,
    43050, 43089, 43092, 43094, 43097, 43136, 43138, 43144, 43146, 43157, 43168, 43170, 43176, 43178, 43269, 43284,
    43289, 43297, 43301, 43329, 43344, 43349, 43354, 43361, 43366, 43369, 43408, 43414, 43520, 43522, 43528, 43530,
    43552, 43554, 43560, 43562, 43601, 43604, 43606, 43648, 43650, 43656, 43658, 43669, 43680, 43682, 43688, 43690,
], dtype=np.uint16)

GRID_LEVELS = ((KGRID_1BIT_2048[:, None].astype(np.int32) >> (2 * np.arange(8))) & 3).astype(np.uint8)
GRID_VALUES = (GRID_LEVELS.astype(np.float32) - np.float32(1.0)).astype(np.float32)

_DELTA = np.float32(0.125)  # IQ1S_DELTA == IQ1M_DELTA
#: the three levels with a positive and with a negative delta: x_p = level - 1 + delta, x_m = level - 1 - delta
X_P = np.array([-1 + 0.125, 0.125, 1 + 0.125], dtype=np.float32)
X_M = np.array([-1 - 0.125, -0.125, 1 - 0.125], dtype=np.float32)
_EPS_IQ1_S = np.float32(1e-12)  # GROUP_MAX_EPS_IQ1_S
_EPS_IQ1_M = np.float32(1e-7)  # GROUP_MAX_EPS_IQ1_M
_FLT_MAX = np.float32(3.4028234663852886e38)
_NWANT = 3  # distance shells kept as neighbours


@numba.njit(cache=True)
def _build_neighbours(levels, kmap, nb):
    """iq2xs_init_impl's neighbour lists for every pattern u of levels 0..2 that is not a grid point:
    the grid points within the 3 smallest squared distances, ordered by (distance, index) as its qsort
    with iq2_compare_func (a total order) leaves them. Fills kmap, returns the used length of nb.
    Patterns holding a level 3 are never formed by the quantizers and keep kmap -1."""
    for g in range(levels.shape[0]):
        u = 0
        for j in range(8):
            u |= np.int32(levels[g, j]) << (2 * j)
        kmap[u] = g
    d2 = np.empty(levels.shape[0], np.int32)
    pos = np.empty(8, np.int32)
    counter = 0
    for u in range(kmap.shape[0]):
        if kmap[u] >= 0:
            continue
        ok = True
        for j in range(8):
            pos[j] = (u >> (2 * j)) & 3
            if pos[j] == 3:
                ok = False
        if not ok:
            continue
        present = np.zeros(33, np.bool_)
        for g in range(levels.shape[0]):
            s = 0
            for j in range(8):
                t = np.int32(levels[g, j]) - pos[j]
                s += t * t
            d2[g] = s
            present[s] = True
        shells = 0
        kmap[u] = -(counter + 1)
        start = counter
        counter += 1
        n = 0
        for s in range(33):
            if not present[s]:
                continue
            for g in range(levels.shape[0]):
                if d2[g] == s:
                    nb[counter] = g
                    counter += 1
                    n += 1
            shells += 1
            if shells == _NWANT:
                break
        nb[start] = n
    return counter


@functools.lru_cache(maxsize=1)
def neighbour_tables():
    """(kmap, neighbours) for the IQ1 lattice, built on first use (about 0.1 s), not at import: every qtool
    command imports every family."""
    kmap = np.full(KMAP_SIZE, -1, np.int32)
    nb = np.zeros(6561 * 256, np.uint16)
    used = _build_neighbours(GRID_LEVELS, kmap, nb)
    return kmap, nb[:used].copy()



@jit
def find_best_neighbour2(neighbours, kmap_entry, levels, xval, weight, scale, xx, L, xfall):
    """ggml iq1_find_best_neighbour2: the neighbour of an off-grid pattern nearest to xval (weighted
    squared distance of scale*xx[level] - x, first of equals wins); L uint8[8] gets its levels.
    xfall is the rest of the row from this group on: ggml's whole-grid fallback reads xval[i] with the
    grid index i (sic), so it is given those same floats (0 past the row's end)."""
    off = -kmap_entry - 1
    n = np.int32(neighbours[off])
    best = _FLT_MAX
    gi = -1
    for jj in range(1, n + 1):
        g = np.int32(neighbours[off + jj])
        d2 = F32(0.0)
        for i in range(8):
            q = xx[levels[g, i]]
            w = weight[i]
            diff = scale * q - xval[i]
            d2 += w * diff * diff
        if d2 < best:
            best = d2
            gi = g
    if gi < 0:
        for g in range(levels.shape[0]):
            xi = xfall[g] if g < xfall.shape[0] else F32(0.0)
            d2 = F32(0.0)
            for j in range(8):
                w = weight[j]
                q = xx[levels[g, j]]
                diff = scale * q - xi
                d2 += w * diff * diff
            if d2 < best:
                best = d2
                gi = g
    if gi >= 0:
        for i in range(8):
            L[i] = levels[gi, i]
    return gi


@jit
def _sort_index(xb, idx):
    """idx = the order of xb ascending, equal values in index order: glibc's qsort (a merge sort,
    stable) with iq1_sort_helper, as ggml sorts its (x, index) pairs."""
    n = xb.shape[0]
    for j in range(n):
        idx[j] = j
    for j in range(1, n):
        v = idx[j]
        xv = xb[v]
        k = j - 1
        while k >= 0 and xb[idx[k]] > xv:
            idx[k + 1] = idx[k]
            k -= 1
        idx[k + 1] = v


@jit
def _sigma2(xbl):
    s = F32(0.0)
    for i in range(QK_K):
        s += xbl[i] * xbl[i]
    return F32(2.0) * s / F32(QK_K)


# ---------------------------------------------------------------------------------------------------
# IQ1_S block, 50 bytes (8 blocks of 32 weights, 4 groups of 8 each):
#
#   0       2                     34                      50
#   | d f16 | qs[32]              | qh u16[8]             |
#
#   grid index of group k of block b = qs[4b + k] | ((qh[b] >> 3k) & 7) << 8
#   qh[b] bits 12..14 = s (block scale), bit 15 = delta sign (1: -delta)
#   x = d * (2s + 1) * (grid[j] +- 0.125)
# ---------------------------------------------------------------------------------------------------


@jit
def quantize_block_iq1_s(x, qw, xrest, y, levels, kmap, neighbours, x_p, x_m, scales, weight, sumx, sumw, idx,
                         L, index, shifts):
    """ggml quantize_row_iq1_s_impl for one 256-weight super-block: x, qw float32[256] -> y uint8[50].
    xrest: the row from this super-block on (for the neighbour fallback)."""
    for j in range(IQ1_S_BYTES):
        y[j] = 0
    bs = 32
    max_scale = F32(0.0)
    sigma2 = _sigma2(x)
    for ib in range(QK_K // bs):
        xb = x[bs * ib:bs * ib + bs]
        for i in range(bs):
            weight[i] = qw[bs * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
        mx = abs(xb[0])
        for i in range(1, bs):
            a = abs(xb[i])
            mx = mx if mx > a else a
        if mx < _EPS_IQ1_S:
            scales[ib] = F32(0.0)
            shifts[ib] = 1
            continue
        _sort_index(xb, idx)
        sumx[0] = F32(0.0)
        sumw[0] = F32(0.0)
        for j in range(bs):
            i = idx[j]
            sumx[j + 1] = sumx[j] + weight[i] * xb[i]
            sumw[j + 1] = sumw[j] + weight[i]
        best = -_FLT_MAX
        scale = mx
        b1 = -1
        b2 = -1
        bshift = 0
        for i1 in range(bs + 1):
            for i2 in range(i1, bs + 1):
                a0 = sumx[i1] - sumx[0]
                a1 = sumx[i2] - sumx[i1]
                a2 = sumx[bs] - sumx[i2]
                w0 = sumw[i1] - sumw[0]
                w1 = sumw[i2] - sumw[i1]
                w2 = sumw[bs] - sumw[i2]
                sqx = a0 * x_p[0] + a1 * x_p[1] + a2 * x_p[2]
                sq2 = w0 * x_p[0] * x_p[0] + w1 * x_p[1] * x_p[1] + w2 * x_p[2] * x_p[2]
                if sq2 > F32(0.0) and sqx * sqx > best * sq2:
                    scale = sqx / sq2
                    best = scale * sqx
                    b1 = i1
                    b2 = i2
                    bshift = 1
                sqx = a0 * x_m[0] + a1 * x_m[1] + a2 * x_m[2]
                sq2 = w0 * x_m[0] * x_m[0] + w1 * x_m[1] * x_m[1] + w2 * x_m[2] * x_m[2]
                if sq2 > F32(0.0) and sqx * sqx > best * sq2:
                    scale = sqx / sq2
                    best = scale * sqx
                    b1 = i1
                    b2 = i2
                    bshift = -1
        if b1 < 0 or b2 < 0 or bshift == 0:
            scales[ib] = F32(0.0)
            shifts[ib] = 1
            continue
        for j in range(bs):
            L[idx[j]] = 0 if j < b1 else (1 if j < b2 else 2)
        if scale < F32(0.0):
            for j in range(bs):
                L[j] = 2 - L[j]
            scale = -scale
            bshift = -bshift
        xx = x_p if bshift == 1 else x_m
        on_grid = True
        for k in range(bs // 8):
            u = 0
            for j in range(8):
                u |= np.int32(L[8 * k + j]) << (2 * j)
            gi = kmap[u]
            if gi < 0:
                on_grid = False
                gi = find_best_neighbour2(neighbours, gi, levels, xb[8 * k:8 * k + 8], weight[8 * k:8 * k + 8],
                                          scale, xx, L[8 * k:8 * k + 8], xrest[bs * ib + 8 * k:])
                if gi < 0:
                    return False
            index[k] = gi
        if not on_grid:
            sqx = F32(0.0)
            sq2 = F32(0.0)
            for k in range(bs // 8):
                g = index[k]
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[levels[g, j]]
                    sqx += w * q * xb[8 * k + j]
                    sq2 += w * q * q
            if sqx > F32(0.0) and sq2 > F32(0.0):
                scale = sqx / sq2
        h = 0
        for k in range(bs // 8):
            y[2 + 4 * ib + k] = np.uint8(index[k] & 255)
            h |= (index[k] >> 8) << (3 * k)
        store_u16(y, 34 + 2 * ib, np.uint16(h))
        if not (scale >= F32(0.0)):
            return False
        scales[ib] = scale
        shifts[ib] = bshift
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        return True
    d = max_scale / F32(15.0)
    store_fp16(y, 0, d * F32(1.125))
    inv = F32(1.0) / d
    for ib in range(QK_K // bs):
        l = nearest_int(F32(0.5) * (inv * scales[ib] - F32(1.0)))
        l = max(0, min(7, l))
        if shifts[ib] == -1:
            l |= 8
        h = np.int32(load_u16(y, 34 + 2 * ib)) | (l << 12)
        store_u16(y, 34 + 2 * ib, np.uint16(h & 0xFFFF))
    return True


@jit_rows
def _quantize_iq1_s(rows, weights, out, levels, kmap, neighbours, x_p, x_m, status):
    nrows, n = rows.shape
    nb = n // QK_K
    for r in numba.prange(nrows):
        scales = np.empty(8, np.float32)
        weight = np.empty(32, np.float32)
        sumx = np.empty(33, np.float32)
        sumw = np.empty(33, np.float32)
        idx = np.empty(32, np.int32)
        L = np.empty(32, np.uint8)
        index = np.empty(4, np.int32)
        shifts = np.empty(8, np.int32)
        status[r] = -1
        for i in range(nb):
            ok = quantize_block_iq1_s(rows[r, QK_K * i:QK_K * (i + 1)], weights[QK_K * i:QK_K * (i + 1)],
                                      rows[r, QK_K * i:], out[r, IQ1_S_BYTES * i:IQ1_S_BYTES * (i + 1)], levels,
                                      kmap, neighbours, x_p, x_m, scales, weight, sumx, sumw, idx, L, index, shifts)
            if not ok and status[r] < 0:
                status[r] = i


@jit_rows
def _dequantize_iq1_s(data, out, values):
    nrows = data.shape[0]
    nb = data.shape[1] // IQ1_S_BYTES
    for r in numba.prange(nrows):
        for i in range(nb):
            y = data[r, IQ1_S_BYTES * i:IQ1_S_BYTES * (i + 1)]
            o = out[r, QK_K * i:QK_K * (i + 1)]
            d = load_fp16(y, 0)
            for ib in range(8):
                qh = np.int32(load_u16(y, 34 + 2 * ib))
                dl = d * F32(2 * ((qh >> 12) & 7) + 1)
                delta = -_DELTA if qh & 0x8000 else _DELTA
                for l in range(4):
                    g = np.int32(y[2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                    for j in range(8):
                        o[32 * ib + 8 * l + j] = dl * (values[g, j] + delta)


def _raise_on(status, what):
    bad = np.flatnonzero(status >= 0)
    if bad.size:
        r = int(bad[0])
        raise QuantError(f"{what}: row {r}, {QK_K}-weight super-block {int(status[r])}: no grid point or a "
                         f"non-finite scale, where ggml aborts (GGML_ASSERT)")


def quantize_iq1_s(rows, weights, out):
    """ggml quantize_iq1_s: rows float32[nrows, n], weights float32[n] (required) -> out uint8[nrows, n/256*50]."""
    if weights.shape[0] == 0:
        raise QuantError("IQ1_S needs an importance vector (ggml asserts quant_weights)")
    status = np.empty(rows.shape[0], np.int32)
    kmap, neighbours = neighbour_tables()
    _quantize_iq1_s(rows, weights, out, GRID_LEVELS, kmap, neighbours, X_P, X_M, status)
    _raise_on(status, "IQ1_S")


def dequantize_iq1_s(data, out):
    """ggml dequantize_row_iq1_s: data uint8[nrows, nb*50] -> out float32[nrows, nb*256]."""
    _dequantize_iq1_s(data, out, GRID_VALUES)


# ---------------------------------------------------------------------------------------------------
# IQ1_M block, 56 bytes (16 blocks of 16 weights, 2 groups of 8 each); no separate d:
#
#   0                     32              48                56
#   | qs[32]              | qh[16]        | sc u16[4]       |
#
#   grid index of group k of block b = qs[2b + k] | ((qh[b] >> 4k) & 7) << 8
#   qh[b] bit 3 / bit 7   = delta sign of group 0 / group 1 (1: -delta)
#   sc[b/4] bits 3(b%4)..3(b%4)+2 = s (block scale); bits 12..15 of sc[0..3] = the 4 nibbles of d (f16)
#   x = d * (2s + 1) * (grid[j] +- 0.125)
# ---------------------------------------------------------------------------------------------------

@jit
def quantize_block_iq1_m(x, qw, xrest, y, levels, kmap, neighbours, x_p, x_m, scales, weight, idx, px,
                         pw, L, index, shifts):
    """ggml quantize_row_iq1_m_impl for one 256-weight super-block: x, qw float32[256] (qw empty for
    none) -> y uint8[56]. px, pw float32[2, 17] are the per-half prefix sums."""
    for j in range(IQ1_M_BYTES):
        y[j] = 0
    bs = 16
    have_w = qw.shape[0] > 0
    max_scale = F32(0.0)
    sigma2 = _sigma2(x)
    p2 = x_p[2]
    m2 = x_m[2]
    cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1]
    cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2]
    cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1]
    cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2]
    for ib in range(QK_K // bs):
        xb = x[bs * ib:bs * ib + bs]
        if have_w:
            for i in range(bs):
                weight[i] = qw[bs * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
        else:
            for i in range(bs):
                weight[i] = xb[i] * xb[i]
        mx = abs(xb[0])
        for i in range(1, bs):
            a = abs(xb[i])
            mx = mx if mx > a else a
        if mx < _EPS_IQ1_M:
            scales[ib] = F32(0.0)
            shifts[ib] = 0
            continue
        _sort_index(xb, idx)
        px[0, 0] = F32(0.0)
        px[1, 0] = F32(0.0)
        pw[0, 0] = F32(0.0)
        pw[1, 0] = F32(0.0)
        for j in range(bs):
            i = idx[j]
            h = 0 if i < bs // 2 else 1
            px[h, j + 1] = px[h, j] + weight[i] * xb[i]
            px[1 - h, j + 1] = px[1 - h, j]
            pw[h, j + 1] = pw[h, j] + weight[i]
            pw[1 - h, j + 1] = pw[1 - h, j]
        tx0 = px[0, bs]
        tx1 = px[1, bs]
        tw0 = pw[0, bs]
        tw1 = pw[1, bs]
        best = -_FLT_MAX
        scale = mx
        b1 = -1
        b2 = -1
        bk = -1
        for i1 in range(bs + 1):
            for i2 in range(i1, bs + 1):
                sx0 = px[0, i1] + px[0, i2]
                sx1 = px[1, i1] + px[1, i2]
                qxp0 = tx0 * p2 - sx0
                qxm0 = tx0 * m2 - sx0
                qxp1 = tx1 * p2 - sx1
                qxm1 = tx1 * m2 - sx1
                q2p0 = tw0 * p2 * p2 + pw[0, i1] * cp1 + pw[0, i2] * cp2
                q2m0 = tw0 * m2 * m2 + pw[0, i1] * cm1 + pw[0, i2] * cm2
                q2p1 = tw1 * p2 * p2 + pw[1, i1] * cp1 + pw[1, i2] * cp2
                q2m1 = tw1 * m2 * m2 + pw[1, i1] * cm1 + pw[1, i2] * cm2
                for k in range(4):
                    if k == 0:
                        sqx = qxp0 + qxp1
                        sq2 = q2p0 + q2p1
                    elif k == 1:
                        sqx = qxp0 + qxm1
                        sq2 = q2p0 + q2m1
                    elif k == 2:
                        sqx = qxm0 + qxp1
                        sq2 = q2m0 + q2p1
                    else:
                        sqx = qxm0 + qxm1
                        sq2 = q2m0 + q2m1
                    if sq2 > F32(0.0) and sqx * sqx > best * sq2:
                        scale = sqx / sq2
                        best = scale * sqx
                        b1 = i1
                        b2 = i2
                        bk = k
        if b1 < 0 or b2 < 0 or bk < 0:
            scales[ib] = F32(0.0)
            shifts[ib] = 0
            continue
        for j in range(bs):
            L[idx[j]] = 0 if j < b1 else (1 if j < b2 else 2)
        if scale < F32(0.0):
            for j in range(bs):
                L[j] = 2 - L[j]
            scale = -scale
            bk = 3 - bk
        on_grid = True
        for k in range(2):
            if k == 0:
                xx = x_p if bk < 2 else x_m
            else:
                xx = x_p if bk % 2 == 0 else x_m
            u = 0
            for j in range(8):
                u |= np.int32(L[8 * k + j]) << (2 * j)
            gi = kmap[u]
            if gi < 0:
                on_grid = False
                gi = find_best_neighbour2(neighbours, gi, levels, xb[8 * k:8 * k + 8], weight[8 * k:8 * k + 8],
                                          scale, xx, L[8 * k:8 * k + 8], xrest[bs * ib + 8 * k:])
                if gi < 0:
                    return False
            index[k] = gi
        if not on_grid:
            sqx = F32(0.0)
            sq2 = F32(0.0)
            for k in range(2):
                if k == 0:
                    xx = x_p if bk < 2 else x_m
                else:
                    xx = x_p if bk % 2 == 0 else x_m
                g = index[k]
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[levels[g, j]]
                    sqx += w * q * xb[8 * k + j]
                    sq2 += w * q * q
            if sqx > F32(0.0) and sq2 > F32(0.0):
                scale = sqx / sq2
        y[2 * ib] = np.uint8(index[0] & 255)
        y[2 * ib + 1] = np.uint8(index[1] & 255)
        y[32 + ib] = np.uint8((index[0] >> 8) | ((index[1] >> 8) << 4))
        if not (scale >= F32(0.0)):
            return False
        scales[ib] = scale
        shifts[ib] = bk
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == F32(0.0):
        return True
    d = max_scale / F32(15.0)
    inv = F32(1.0) / d
    sqx = F32(0.0)
    sq2 = F32(0.0)
    sc0 = 0
    sc1 = 0
    sc2 = 0
    sc3 = 0
    for ib in range(QK_K // bs):
        l = nearest_int(F32(0.5) * (inv * scales[ib] - F32(1.0)))
        l = max(0, min(7, l))
        bits = l << (3 * (ib % 4))
        if ib // 4 == 0:
            sc0 |= bits
        elif ib // 4 == 1:
            sc1 |= bits
        elif ib // 4 == 2:
            sc2 |= bits
        else:
            sc3 |= bits
        sh = shifts[ib]
        mask = 0x00 if sh == 0 else (0x80 if sh == 1 else (0x08 if sh == 2 else 0x88))
        qh = np.int32(y[32 + ib]) | mask
        y[32 + ib] = np.uint8(qh)
        xb = x[bs * ib:bs * ib + bs]
        if have_w:
            for i in range(bs):
                weight[i] = qw[bs * ib + i] * np.sqrt(sigma2 + xb[i] * xb[i])
        else:
            for i in range(bs):
                weight[i] = xb[i] * xb[i]
        fl = F32(2 * l + 1)
        for k in range(2):
            if k == 0:
                xx = x_p if sh < 2 else x_m
            else:
                xx = x_p if sh % 2 == 0 else x_m
            g = np.int32(y[2 * ib + k]) + ((qh << (8 - 4 * k)) & 0x700)
            for j in range(8):
                w = weight[8 * k + j]
                q = xx[levels[g, j]] * fl
                sqx += w * q * xb[8 * k + j]
                sq2 += w * q * q
    if sq2 > F32(0.0):
        d = sqx / sq2
    s = np.int32(fp32_to_fp16_bits(d * F32(1.1125)))
    sc0 |= (s & 0x000F) << 12
    sc1 |= (s & 0x00F0) << 8
    sc2 |= (s & 0x0F00) << 4
    sc3 |= s & 0xF000
    store_u16(y, 48, np.uint16(sc0 & 0xFFFF))
    store_u16(y, 50, np.uint16(sc1 & 0xFFFF))
    store_u16(y, 52, np.uint16(sc2 & 0xFFFF))
    store_u16(y, 54, np.uint16(sc3 & 0xFFFF))
    return True


@jit_rows
def _quantize_iq1_m(rows, weights, out, levels, kmap, neighbours, x_p, x_m, status):
    nrows, n = rows.shape
    nb = n // QK_K
    for r in numba.prange(nrows):
        scales = np.empty(16, np.float32)
        weight = np.empty(16, np.float32)
        idx = np.empty(16, np.int32)
        px = np.empty((2, 17), np.float32)
        pw = np.empty((2, 17), np.float32)
        L = np.empty(16, np.uint8)
        index = np.empty(2, np.int32)
        shifts = np.empty(16, np.int32)
        status[r] = -1
        for i in range(nb):
            qw = weights[QK_K * i:QK_K * (i + 1)] if weights.shape[0] > 0 else weights
            ok = quantize_block_iq1_m(rows[r, QK_K * i:QK_K * (i + 1)], qw, rows[r, QK_K * i:],
                                      out[r, IQ1_M_BYTES * i:IQ1_M_BYTES * (i + 1)], levels, kmap, neighbours,
                                      x_p, x_m, scales, weight, idx, px, pw, L, index, shifts)
            if not ok and status[r] < 0:
                status[r] = i


@jit_rows
def _dequantize_iq1_m(data, out, values):
    nrows = data.shape[0]
    nb = data.shape[1] // IQ1_M_BYTES
    for r in numba.prange(nrows):
        for i in range(nb):
            y = data[r, IQ1_M_BYTES * i:IQ1_M_BYTES * (i + 1)]
            o = out[r, QK_K * i:QK_K * (i + 1)]
            sc0 = np.int32(load_u16(y, 48))
            sc1 = np.int32(load_u16(y, 50))
            sc2 = np.int32(load_u16(y, 52))
            sc3 = np.int32(load_u16(y, 54))
            u = (sc0 >> 12) | ((sc1 >> 8) & 0x00F0) | ((sc2 >> 4) & 0x0F00) | (sc3 & 0xF000)
            d = fp16_bits_to_fp32(np.uint16(u))
            for ib in range(8):
                sc = np.int32(load_u16(y, 48 + 2 * (ib // 2)))
                dl1 = d * F32(2 * ((sc >> (6 * (ib % 2))) & 7) + 1)
                dl2 = d * F32(2 * ((sc >> (6 * (ib % 2) + 3)) & 7) + 1)
                qh0 = np.int32(y[32 + 2 * ib])
                qh1 = np.int32(y[32 + 2 * ib + 1])
                for l in range(4):
                    qh = qh0 if l < 2 else qh1
                    g = np.int32(y[4 * ib + l]) | ((qh << (8 - 4 * (l % 2))) & 0x700)
                    neg = (qh & (0x08 if l % 2 == 0 else 0x80)) != 0
                    delta = -_DELTA if neg else _DELTA
                    dl = dl1 if l < 2 else dl2
                    for j in range(8):
                        o[32 * ib + 8 * l + j] = dl * (values[g, j] + delta)


def quantize_iq1_m(rows, weights, out):
    """ggml quantize_iq1_m: rows float32[nrows, n], weights float32[n] or [0] -> out uint8[nrows, n/256*56]."""
    status = np.empty(rows.shape[0], np.int32)
    kmap, neighbours = neighbour_tables()
    _quantize_iq1_m(rows, weights, out, GRID_LEVELS, kmap, neighbours, X_P, X_M, status)
    _raise_on(status, "IQ1_M")


def dequantize_iq1_m(data, out):
    """ggml dequantize_row_iq1_m: data uint8[nrows, nb*56] -> out float32[nrows, nb*256]."""
    _dequantize_iq1_m(data, out, GRID_VALUES)
