import numpy as np
import pytest
import soundfile as sf

from tagstack.audio.io import find_audio, load, stream
from tagstack.errors import AudioError

SR = 22050


def tone(sr: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_formats_decode_to_mono_at_22050(tmp_path, fmt, subtype):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot write {fmt}")
    path = tmp_path / f"a.{fmt.lower()}"
    stereo = np.stack([tone(44100), tone(44100)], axis=1)
    sf.write(path, stereo, 44100, format=fmt, subtype=subtype)
    y = load(path, sr=SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size - 2 * SR) < 0.06 * SR  # mp3 adds encoder delay
    spec = np.abs(np.fft.rfft(y[SR // 2 : SR // 2 + 8192]))
    assert abs(np.argmax(spec) * SR / 8192 - 440) < 5


def test_m4a_goes_through_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "a.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=44100)
        s.layout = "mono"
        y = tone(44100)
        frame = av.AudioFrame.from_ndarray(y[None, :], format="flt", layout="mono")
        frame.sample_rate = 44100
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    out = load(path, sr=SR)
    assert abs(out.size - 2 * SR) < 0.1 * SR


def test_offset_and_duration(tmp_path):
    sf.write(tmp_path / "a.wav", np.arange(SR * 3, dtype=np.float32) / (SR * 3), SR, subtype="FLOAT")
    y = load(tmp_path / "a.wav", sr=SR, offset=1.0, duration=0.5)
    assert y.size == SR // 2
    assert y[0] == pytest.approx(SR / (SR * 3), abs=1e-6)


def test_stream_yields_bounded_blocks(tmp_path):
    sf.write(tmp_path / "a.wav", tone(SR, 10.0), SR)
    blocks = list(stream(tmp_path / "a.wav", sr=SR, block_seconds=4.0))
    assert [b.size for b in blocks] == [4 * SR, 4 * SR, 2 * SR]


@pytest.mark.parametrize("content,reason", [(None, "file not found"), (b"", "file is empty"), (b"RIFF\x00\x00junk" * 10, "cannot decode")])
def test_bad_files_raise_an_error_naming_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=f"bad.wav.*{reason}"):
        load(path)


def test_a_truncated_file_is_reported_with_its_name_and_the_reason(tmp_path):
    sf.write(tmp_path / "a.flac", tone(SR, 3.0), SR)
    data = (tmp_path / "a.flac").read_bytes()
    (tmp_path / "t.flac").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"t\.flac: cannot decode \(.*lost sync"):
        load(tmp_path / "t.flac")


def test_a_flac_whose_header_gives_no_length_is_read_whole(tmp_path):
    """FLAC allows "length unknown" (STREAMINFO's total_samples 0), as encoders writing to a pipe leave it: libsndfile
    opens such a file and then fails mid-way; it is read by FFmpeg instead, sample for sample, and its length counted."""
    from tagstack.audio.io import duration_seconds

    y = (0.1 * np.random.default_rng(0).standard_normal(8000 * 12)).astype(np.float32)
    sf.write(tmp_path / "known.flac", y, 8000)
    data = bytearray((tmp_path / "known.flac").read_bytes())
    fields = int.from_bytes(data[18:26], "big")
    data[18:26] = ((fields >> 36) << 36).to_bytes(8, "big")  # the low 36 bits of these 8 bytes: total_samples
    (tmp_path / "unknown.flac").write_bytes(bytes(data))
    assert sf.info(str(tmp_path / "unknown.flac")).frames > 2**62  # what libsndfile makes of it
    assert duration_seconds(tmp_path / "unknown.flac") == pytest.approx(12.0)
    np.testing.assert_array_equal(load(tmp_path / "unknown.flac"), load(tmp_path / "known.flac"))


def test_find_audio_expands_folders_and_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.wav", "b.mp3", "sub/c.flac", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = find_audio([str(tmp_path)])
    assert [p.name for p in found] == ["a.wav", "b.mp3", "c.flac"]
    assert [p.name for p in find_audio([str(tmp_path / "*.mp3")])] == ["b.mp3"]
    # a file whose name has glob characters is that file, not a pattern; a pattern matching nothing is kept, to be reported
    (tmp_path / "Song [Live].wav").write_bytes(b"x")
    assert find_audio([str(tmp_path / "Song [Live].wav")]) == [tmp_path / "Song [Live].wav"]
    assert find_audio([str(tmp_path / "*.ogg")]) == [tmp_path / "*.ogg"]


def test_a_named_folder_without_audio_and_links_that_lead_nowhere_are_said(tmp_path, caplog):
    (tmp_path / "album.wav").mkdir()  # a folder, named like a file, with nothing tagstack reads
    (tmp_path / "album.wav" / "cover.jpg").write_bytes(b"x")
    with caplog.at_level("WARNING", logger="tagstack"):
        assert find_audio([str(tmp_path / "album.wav")]) == []
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"{tmp_path / 'album.wav'}: a folder with no audio files (none named *.wav, *.flac")
    (tmp_path / "loop.mp3").symlink_to(tmp_path / "loop.mp3")
    (tmp_path / "gone.mp3").symlink_to(tmp_path / "nowhere.mp3")
    with pytest.raises(AudioError, match=r"loop.mp3: cannot open \(Too many levels of symbolic links\)"):
        load(tmp_path / "loop.mp3")
    with pytest.raises(AudioError, match=r"gone.mp3: file not found \(a broken symbolic link\)"):
        load(tmp_path / "gone.mp3")


def test_real_dataset_encodings_decode(shared_data):
    for name, seconds in (
        ("mtat-joram-moments_of_clarity-08-solipsism-59-88.mp3", 29.27),
        ("msd-TRWJAZW128F42760DD.mp3", 29.95),
        ("openmic-000046_3840-2s.ogg", 2.0),
    ):
        y = load(shared_data / "fixtures" / "audio" / name, sr=SR)
        assert abs(y.size / SR - seconds) < 0.15, name
        assert np.abs(y).max() > 0.01
