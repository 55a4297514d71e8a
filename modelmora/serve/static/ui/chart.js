// A small live line chart on a canvas: one line per series, the last WINDOW samples.

export const WINDOW = 40;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

export function color(index) {
  return COLORS[index % COLORS.length];
}

// series: [{label, points: [number | null, ...]}]; format: the axis' number formatting.
export function draw(canvas, title, series, format) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 480;
  const height = canvas.clientHeight || 160;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const pad = { left: 56, right: 8, top: 22, bottom: 8 };
  const values = series.flatMap((s) => s.points).filter((v) => v !== null && v !== undefined);
  const top = Math.max(...values, 0) || 1;
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = "#334155";
  g.fillText(title, pad.left, 14);
  g.strokeStyle = "#cbd5e1";
  g.lineWidth = 1;
  g.beginPath();
  g.moveTo(pad.left, pad.top);
  g.lineTo(pad.left, height - pad.bottom);
  g.lineTo(width - pad.right, height - pad.bottom);
  g.stroke();
  g.fillStyle = "#64748b";
  g.textAlign = "right";
  g.fillText(format(top), pad.left - 4, pad.top + 8);
  g.fillText(format(0), pad.left - 4, height - pad.bottom);
  const x = (i) => pad.left + ((width - pad.left - pad.right) * i) / (WINDOW - 1);
  const y = (v) => height - pad.bottom - ((height - pad.top - pad.bottom) * v) / top;
  series.forEach((s, index) => {
    g.strokeStyle = color(index);
    g.lineWidth = 2;
    g.beginPath();
    let drawing = false;
    const offset = WINDOW - s.points.length;
    s.points.forEach((v, i) => {
      if (v === null || v === undefined) {
        drawing = false;
        return;
      }
      if (drawing) g.lineTo(x(i + offset), y(v));
      else g.moveTo(x(i + offset), y(v));
      drawing = true;
    });
    g.stroke();
  });
}

// Push a sample, keeping the last WINDOW.
export function push(points, value) {
  points.push(value);
  if (points.length > WINDOW) points.shift();
}
